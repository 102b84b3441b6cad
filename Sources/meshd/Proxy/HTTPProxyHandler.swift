import CoreMetrics
import Logging
import MeshCore
import NIOCore
import NIOHPACK
import NIOHTTP1
import NIOHTTP2

/// The downstream side of an HTTP/1.1 connection, on either listener. For each request it walks the
/// three steps — route (logical) → balance (concrete) → endpoint (send) — using MeshCore's decisions,
/// then streams the request to an upstream connection of the same event loop and the response back,
/// with backpressure both ways (reads are held while the partner cannot take more).
///
/// On an HTTP/2 connection there is one handler per stream (`multiplexed`), behind NIO's HTTP/2 ↔
/// HTTP/1 codec: the same path, one request per stream. Upstream, a request goes as HTTP/1.1 on a
/// pooled connection or as a stream of a multiplexed HTTP/2 connection (see `UpstreamPool`).
final class HTTPProxyHandler: ChannelDuplexHandler, RemovableChannelHandler, UpstreamOwner, LoopTimed {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundIn = HTTPServerResponsePart
    typealias OutboundOut = HTTPServerResponsePart

    enum State {
        /// Waiting for a request head since `since`.
        case idle(since: NIODeadline)
        /// Routed; waiting for a new upstream connection. Request parts read meanwhile are buffered.
        case connecting
        /// Request and/or response streaming through `upstream`.
        case proxying(UpstreamConnection)
        /// Waiting out a retry backoff; request parts read meanwhile are buffered.
        case backoff(Scheduled<Void>)
        /// meshd answered itself; the rest of the request body is discarded until its end.
        case discarding
        case closed
    }

    let direction: Direction
    let loop: LoopContext
    let connectionGuard: ConnectionGuard
    /// One stream of an HTTP/2 connection (one request, then the stream closes).
    let multiplexed: Bool
    private var context: ChannelHandlerContext?
    private(set) var state: State = .idle(since: .now())
    private var req = RequestState()
    private var pending = CircularBuffer<HTTPServerRequestPart>(initialCapacity: 4)
    /// Parts of pipelined requests read while an earlier request was in progress (bounded: reads stop
    /// as soon as one is queued, so at most one read's worth).
    private var pipelined = CircularBuffer<HTTPServerRequestPart>(initialCapacity: 0)
    /// Set by a graceful drain: close after the current exchange.
    private var quiescing = false
    /// Increments per request: callbacks of an earlier request (a late connect) are recognised.
    private var serial = 0
    /// A hedged second attempt in flight (see `maybeHedge`).
    private var hedge: UpstreamConnection?
    private var hedgeEndpoint: LoopEndpoint?
    private var hedgeConnecting = false
    /// Precise timers for the current attempt (only on routes with perTryTimeout / hedgeAfter).
    private var attemptTimers: [Scheduled<Void>] = []
    private var readPending = false
    private var upstreamNeedsFlush = false
    /// An HTTP/2 stream's first attempt waits for the end of the read cycle (see `startRequest`).
    private var attemptDeferred = false
    private var clientIP = "unknown"
    private var firstRequest = true
    /// A trailers-only gRPC response head waiting for its end (HTTP/2 downstream only).
    private var trailersOnlyHead: HTTPResponseHead?
    /// Request-body bytes read and dropped after meshd answered early.
    private var discarded = 0
    /// Past this, the rest of an answered request's body is not read: the connection is closed.
    static let maxDiscardBytes = 1 << 20

    init(direction: Direction, loop: LoopContext, connectionGuard: ConnectionGuard, multiplexed: Bool = false) {
        self.direction = direction
        self.loop = loop
        self.connectionGuard = connectionGuard
        self.multiplexed = multiplexed
    }

    /// What the connection knows about the request in flight; one per connection, reset per request.
    struct RequestState {
        var head = HTTPRequestHead(version: .http1_1, method: .GET, uri: "/")
        var method = HTTPMethod.GET
        var authority: Substring = ""
        var path: Substring = ""
        var service: LoopService?
        var endpoint: LoopEndpoint?
        var target: SocketAddress?
        var routeName = ""
        var started = NIODeadline.now()
        var deadline = NIODeadline.distantFuture
        var requestEnded = false
        var responseStarted = false
        var responseEnded = false
        var status = 0
        var keepAlive = true
        var expectContinue = false
        var bodyForwarded = false
        var reusedConnection = false
        var retried = false
        /// When the response head arrived (uptime nanoseconds), for the balancer's latency EWMA.
        var responseHeadNanos: Int64?
        /// Outbound: the route's per-loop state (retry policy and budget, rate limits).
        var routeState: RouteState?
        var attempts = 0
        var retries = 0
        var tryDeadline = NIODeadline.distantFuture
        var lastActivity = NIODeadline.now()
        var hash: UInt64?
        var previousEndpoint: LoopEndpoint?
        /// Request parts kept for a replay (retries on a response need the request again).
        var replay: [HTTPServerRequestPart] = []
        var replayBytes = 0
        var replayable = false
        var countedActive = false
        var countedPending = false
        var countedRetry = false
        /// The current attempt's head went to an upstream (so the application may have seen it).
        var sentToUpstream = false
        var attemptStarted = NIODeadline.now()
        /// A hedged attempt was considered (at most one per request).
        var hedged = false
        /// The `Upgrade` header of an upgrade request (WebSocket...), passed through.
        var upgrade: String?
        /// A `101` head waiting for its end before the connections switch to a byte pipe.
        var switchingHead: HTTPResponseHead?
        /// A gRPC response held until its trailers say whether to retry (bounded by bufferBytes).
        var heldHead: HTTPResponseHead?
        var heldBody: [ByteBuffer] = []
        var heldBytes = 0
        /// A gRPC call (`content-type: application/grpc...`): meshd's own replies are gRPC-shaped.
        var grpc = false
        /// The call's status: from the response headers (trailers-only), trailers, or meshd's reply.
        var grpcStatus: Int?
        /// `grpc-timeout` set the deadline: it covers the whole call, not just the response head.
        var grpcDeadline = false
        /// Upstream as a stream of a multiplexed HTTP/2 connection (else HTTP/1.1).
        var upstreamH2 = false
    }

    // MARK: - Channel events

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        loop.register(self)
        if multiplexed { connectionGuard.streamOpened() }
        let peer = multiplexed ? context.channel.parent?.remoteAddress : context.channel.remoteAddress
        if let ip = peer?.ipAddress { clientIP = ip }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        loop.unregister(self)
        if multiplexed { connectionGuard.streamClosed() }
        self.context = nil
    }

    func channelInactive(context: ChannelHandlerContext) {
        if multiplexed && (attemptDeferred || firstRequest) {
            // Reset in the same read as its HEADERS (before NIO handed them over, or before the
            // first attempt started at the end of the read): no upstream work was started for it.
            attemptDeferred = false
            connectionGuard.streamResetPrematurely()
        }
        switch state {
        case .proxying(let upstream) where req.responseEnded:
            // The response is out (an HTTP/2 stream closes as its last frame is written).
            upstream.close()
            finishRequest(status: req.status, error: nil, reuse: false)
        case .proxying(let upstream):
            // The client left mid-exchange: the upstream connection is in an unknown state.
            upstream.close()
            finishRequest(status: req.responseStarted ? req.status : 499, error: nil, reuse: false)
        case .connecting:
            finishRequest(status: 499, error: nil, reuse: false)
        case .backoff(let task):
            task.cancel()
            finishRequest(status: 499, error: nil, reuse: false)
        default: break
        }
        state = .closed
        pending.removeAll()
        loop.unregister(self)
        context.fireChannelInactive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let part = unwrapInboundIn(data)
        if !pipelined.isEmpty {
            // Parts of a pipelined request keep their order behind the ones already queued.
            pipelined.append(part)
            return
        }
        handle(part, context: context)
    }

    /// One request part, in order. A head that arrives while a request is still in progress (a
    /// pipelining client) is queued with what follows it, and reads stop until the current exchange
    /// completes; clients that do not pipeline never pay for this.
    private func handle(_ part: HTTPServerRequestPart, context: ChannelHandlerContext) {
        switch part {
        case .head(let head):
            guard case .idle = state else {
                if case .closed = state { return }
                pipelined.append(part)
                return
            }
            startRequest(head, context: context)
        case .body, .end:
            if case .end = part { req.requestEnded = true }
            if req.replayable { keepForReplay(part) }
            req.lastActivity = .now()
            switch state {
            case .connecting, .backoff:
                pending.append(part)
            case .proxying(let upstream):
                forward(part, to: upstream)
            case .discarding:
                if case .body(let b) = part {
                    discarded += b.readableBytes
                    if discarded > Self.maxDiscardBytes {
                        // Not worth reading a large body we will not use: close instead.
                        state = .closed
                        context.close(promise: nil)
                        return
                    }
                }
                if req.requestEnded { completeLocalReply(context: context) }
            case .idle, .closed:
                break
            }
        }
    }

    /// After an exchange completes: serve queued pipelined requests, then resume reading.
    private func drainPipelined(context: ChannelHandlerContext) {
        while let next = pipelined.first {
            if case .head = next, !isIdle { return }
            pipelined.removeFirst()
            handle(next, context: context)
        }
        if readPending && isIdle {
            readPending = false
            context.read()
        }
    }

    private var isBackoff: Bool {
        if case .backoff = state { return true }
        return false
    }

    private var isIdle: Bool {
        if case .idle = state { return true }
        return false
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        if upstreamNeedsFlush, case .proxying(let upstream) = state {
            upstreamNeedsFlush = false
            upstream.flush()
        }
        context.fireChannelReadComplete()
    }

    func read(context: ChannelHandlerContext) {
        if !pipelined.isEmpty {
            readPending = true
            return
        }
        switch state {
        case .connecting, .backoff:
            readPending = true
        case .proxying(let upstream) where !upstream.isWritable:
            readPending = true
        default:
            context.read()
        }
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable, case .proxying(let upstream) = state {
            upstream.resumeReading()
        }
        context.fireChannelWritabilityChanged()
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        if let parserError = error as? HTTPParserError {
            let kind: MeshError = parserError == .headerOverflow ? .headersTooLarge : .badRequest
            if let left = loop.shared.protocolErrorLog.admit() {
                loop.shared.logger.info(
                    "malformed request",
                    metadata: [
                        "direction": "\(direction.label)", "error": "\(parserError)", "client": "\(clientIP)", "suppressed": "\(left)",
                    ])
            }
            protocolFailure(kind, context: context)
            return
        }
        if error is ByteToMessageDecoderError {
            protocolFailure(.badRequest, context: context)
            return
        }
        // I/O errors (connection reset by the client...): just close.
        context.close(promise: nil)
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let e = event as? ChannelEvent, case .inputClosed = e {
            // The client will send no more: finish what is in flight, then close.
            req.keepAlive = false
            if isIdle && pipelined.isEmpty {
                state = .closed
                context.close(promise: nil)
            }
            return
        }
        if event is ChannelShouldQuiesceEvent {
            // Graceful drain: an idle connection closes now; a busy one after its response (which
            // carries `connection: close` if its head is not out yet).
            quiescing = true
            if isIdle {
                state = .closed
                context.close(promise: nil)
            }
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    // MARK: - Request start: route → balance → endpoint

    private func startRequest(_ head: HTTPRequestHead, context: ChannelHandlerContext) {
        firstRequest = false
        serial &+= 1
        req = RequestState()
        req.started = .now()
        req.method = head.method
        req.keepAlive = multiplexed || head.isKeepAlive
        // One pass over the headers: framing, Expect, hop-by-hop, XFF, gRPC, the meshd marks.
        let scan = head.headers.meshScan()
        req.grpc = scan.grpc
        let snapshot = loop.snapshot

        // Authority: absolute-form URI (as http_proxy clients send it) or the Host header.
        var uri = Substring(head.uri)
        var authority: Substring?
        var rewroteURI = false
        if uri.utf8.first != UInt8(ascii: "/"), let (hostPart, rest) = Self.splitAbsoluteForm(uri) {
            authority = hostPart
            uri = rest
            rewroteURI = true
        }
        guard !scan.contentLengthTooLarge else {
            req.keepAlive = false  // the framing of what follows cannot be trusted
            reply(.badRequest, context: context, detail: "Content-Length larger than 2^63 - 1")
            return
        }
        guard scan.hostCount <= 1 else {
            // RFC 9112 §3.2: meshd and the application must never disagree on the target.
            reply(.badRequest, context: context, detail: "more than one Host header")
            return
        }
        let hostHeader = head.headers.first(name: "host")
        if authority == nil, let hostHeader { authority = Substring(hostHeader) }
        guard let authority, !authority.isEmpty else {
            reply(.badRequest, context: context, detail: "request has no Host header")
            return
        }
        req.authority = authority
        let path = uri.prefix { $0 != "?" }
        req.path = path

        var outHead = head
        if rewroteURI {
            // RFC 9112 §3.2.2: the absolute-form target's authority replaces any Host the client sent,
            // so the application sees the authority meshd routed on.
            outHead.uri = String(uri)
            outHead.headers.replaceOrAdd(name: "host", value: String(authority))
        }
        outHead.version = .http1_1

        switch direction {
        case .outbound:
            let host = RouteTable.hostWithoutPort(authority)
            let method = head.method.rawValue
            guard
                let route = snapshot.mesh.routes.match(
                    host: host, path: path, method: method, header: { head.headers.first(name: $0) })
            else {
                reply(.noRoute, context: context, detail: "no route for authority '\(host)'")
                return
            }
            req.routeName = route.name
            req.deadline = req.started + .nanoseconds(route.timeout.nanoseconds)
            guard let serviceIndex = RouteTable.pickBackend(route, using: &loop.rng) else {
                reply(.noEndpoints, context: context, detail: "route '\(route.name)' has no backend with weight")
                return
            }
            let service = loop.services[serviceIndex]
            req.service = service
            req.upstreamH2 = service.upstreamProtocol.usesHTTP2(downstreamHTTP2: multiplexed)
            let now = Int64(req.started.uptimeNanoseconds)
            let routeState = loop.routeStates[route.index]
            req.routeState = routeState
            if let wait = routeState.admit(source: clientIP, now: now) {
                service.metrics.rateLimited.increment()
                reply(.rateLimited, context: context, detail: "rate limit of route '\(route.name)' exceeded", retryAfter: wait)
                return
            }
            if service.limits.admit(requests: service.counters.activeRequests.load(ordering: .relaxed)) != nil {
                reply(.overflowRequests, context: context, detail: "service '\(service.name)' is at limits.maxRequests")
                return
            }
            service.counters.activeRequests.wrappingIncrement(ordering: .relaxed)
            req.countedActive = true
            routeState.budget.recordRequest(now: now)
            req.replayable = routeState.keepsReplay
            req.hash = service.hashKey(headers: head.headers, clientIP: clientIP)
            guard let endpointIndex = service.balancer.pick(hash: req.hash, now: now, using: &loop.rng) else {
                reply(.noEndpoints, context: context, detail: "service '\(service.name)' has no endpoints")
                return
            }
            let endpoint = service.endpoints[endpointIndex]
            req.endpoint = endpoint
            req.target = endpoint.address
            outHead.headers.replaceOrAdd(name: HeaderPolicy.destinationHeader, value: endpoint.destinationHeader)
        case .inbound:
            req.service = loop.inboundService
            req.deadline = req.started + .nanoseconds(snapshot.config.upstream.requestTimeout.nanoseconds)
            req.upstreamH2 = snapshot.config.inbound.appProtocol.usesHTTP2(downstreamHTTP2: multiplexed)
            if snapshot.config.mode == .node {
                // A node proxy forwards to the pod the calling meshd picked, if it is one of this node's.
                let dst: HostPort
                switch loop.nodeInbound.destination(head.headers.first(name: HeaderPolicy.destinationHeader)) {
                case .success(let d): dst = d
                case .failure(let refusal):
                    reply(.destinationNotAllowed, context: context, detail: refusal.rawValue)
                    return
                }
                guard let addr = try? SocketAddress(ipAddress: dst.host, port: dst.port) else {
                    reply(.destinationNotAllowed, context: context, detail: NodeInboundPolicy.Refusal.malformed.rawValue)
                    return
                }
                req.target = addr
            } else {
                req.target = snapshot.appAddress
            }
            outHead.headers.remove(name: HeaderPolicy.destinationHeader)
            if scan.originalProtocol {
                // An HTTP/1.1 request that rode HTTP/2 between two meshd: HTTP/1.1 again to the app.
                outHead.headers.remove(name: HeaderPolicy.originalProtocolHeader)
                if snapshot.config.inbound.appProtocol == .auto { req.upstreamH2 = false }
            }
        }

        if let value = scan.grpcTimeout, req.grpc, let timeout = GRPC.parseTimeout(value) {
            // The caller's deadline covers the whole call (the route's timeout only the response head).
            req.deadline = req.started + .nanoseconds(timeout.nanoseconds)
            req.grpcDeadline = true
        }
        // Hop-by-hop headers go; framing is re-added by the encoder; x-forwarded-for grows.
        req.expectContinue = scan.expectContinue
        outHead.headers.meshStripHopByHop(scan, removeExpect: scan.expectContinue)
        if let existing = scan.forwardedFor {
            let all = scan.forwardedForCount == 1 ? existing : head.headers["x-forwarded-for"].joined(separator: ", ")
            outHead.headers.replaceOrAdd(
                name: "x-forwarded-for", value: HeaderPolicy.appendingForwardedFor(existing: all, client: clientIP))
        } else {
            outHead.headers.add(name: "x-forwarded-for", value: clientIP)
        }
        if hostHeader == nil && !rewroteURI { outHead.headers.add(name: "host", value: String(req.authority)) }
        if let upgrade = head.headers.first(name: "upgrade"),
            head.headers["connection"].contains(where: { HeaderPolicy.listContains($0, token: "upgrade") })
        {
            // An upgrade (WebSocket...) passes through: these two hop-by-hop headers go on.
            req.upgrade = upgrade
            outHead.headers.replaceOrAdd(name: "upgrade", value: upgrade)
            outHead.headers.replaceOrAdd(name: "connection", value: "upgrade")
            req.upstreamH2 = false  // an upgrade is HTTP/1.1 only
        }
        if scan.teTrailers && !req.upstreamH2 {
            // `TE: trailers` is kept for HTTP/2 (gRPC needs it); in HTTP/1.1 it is hop-by-hop.
            outHead.headers.remove(name: "te")
        }
        if direction == .outbound && req.upstreamH2 && !multiplexed {
            outHead.headers.replaceOrAdd(name: HeaderPolicy.originalProtocolHeader, value: "HTTP/1.1")
        }
        req.head = outHead

        if multiplexed {
            // An HTTP/2 stream's first attempt starts when the connection's read cycle ends: a
            // RST_STREAM that came in the same read (a rapid-reset flood, CVE-2023-44487) has closed
            // the stream by then, and no upstream work is started for it.
            state = .connecting
            attemptDeferred = connectionGuard.deferUntilReadComplete(self)
            if attemptDeferred { return }
        }
        beginAttempt(context: context)
    }

    /// The connection's read cycle ended (see `startRequest`): the stream is still open.
    func startDeferredAttempt() {
        guard attemptDeferred, let context, case .connecting = state else { return }
        attemptDeferred = false
        beginAttempt(context: context)
    }

    /// One attempt: the endpoint in `req.endpoint` gets the request (again, on a retry).
    private func beginAttempt(context: ChannelHandlerContext) {
        req.attempts += 1
        req.responseStarted = false
        req.responseHeadNanos = nil
        req.status = 0
        req.bodyForwarded = false
        req.sentToUpstream = false
        let now = NIODeadline.now()
        req.lastActivity = now
        req.attemptStarted = now
        cancelAttemptTimers()
        if let perTry = req.routeState?.retry.perTryTimeout {
            req.tryDeadline = now + .nanoseconds(perTry.nanoseconds)
            scheduleCheck(in: perTry, context: context)
        }
        if let hedgeAfter = req.routeState?.retry.hedgeAfter, !req.hedged {
            scheduleCheck(in: hedgeAfter, context: context)
        }
        req.endpoint?.started()
        dispatch(context: context)
    }

    private func scheduleCheck(in delay: MeshDuration, context: ChannelHandlerContext) {
        let serial = self.serial
        attemptTimers.append(
            context.eventLoop.assumeIsolated().scheduleTask(in: .nanoseconds(delay.nanoseconds + 1_000_000)) { [self] in
                if self.serial == serial { self.checkTimeouts(now: .now()) }
            })
    }

    private func cancelAttemptTimers() {
        guard !attemptTimers.isEmpty else { return }
        for t in attemptTimers { t.cancel() }
        attemptTimers.removeAll()
    }

    private func keepForReplay(_ part: HTTPServerRequestPart) {
        if case .body(let b) = part {
            req.replayBytes += b.readableBytes
            if req.replayBytes > (req.routeState?.retry.bufferBytes ?? 0) {
                // Too large to keep: this request will not be retried on a response.
                req.replayable = false
                req.replay.removeAll()
                return
            }
        }
        req.replay.append(part)
    }

    /// Sends the request head to a pooled connection or opens a new one.
    private func dispatch(context: ChannelHandlerContext) {
        guard let target = req.target else { return }
        releasePending()
        if !req.upstreamH2, let conn = loop.pool.lease(target) {
            req.reusedConnection = true
            attach(conn, context: context)
            return
        }
        req.reusedConnection = false
        var counters: ServiceCounters?
        var connectTimeout = loop.snapshot.config.upstream.connectTimeout
        if direction == .outbound, let service = req.service {
            // Circuit breaker: a new connection must fit the service's connection and pending limits
            // (a stream on an HTTP/2 connection that has room needs no new connection).
            let needsConnection = !req.upstreamH2 || !loop.pool.hasHTTP2Capacity(target)
            if needsConnection,
                service.limits.admitConnection(connections: service.counters.connections.load(ordering: .relaxed)) != nil
            {
                reply(.overflowConnections, context: context, detail: "service '\(service.name)' is at limits.maxConnections")
                return
            }
            if service.limits.admitPending(pending: service.counters.pending.load(ordering: .relaxed)) != nil {
                reply(.overflowPending, context: context, detail: "service '\(service.name)' is at limits.maxPending")
                return
            }
            service.counters.pending.wrappingIncrement(ordering: .relaxed)
            req.countedPending = true
            counters = service.counters
            connectTimeout = service.connectTimeout
        }
        state = .connecting
        let attempt = req.attempts
        let serial = self.serial
        let (future, reused) = connectUpstream(target, timeout: connectTimeout, counters: counters)
        req.reusedConnection = reused
        future.assumeIsolated().whenComplete { [self] result in
            // (a request that ended while connecting gave its pending slot back in finishRequest)
            if self.serial == serial && self.req.attempts == attempt { self.releasePending() }
            guard case .connecting = self.state, self.serial == serial, self.req.attempts == attempt,
                let context = self.context
            else {
                // The request is gone: a fresh HTTP/1.1 connection serves the next one from the pool.
                if case .success(let conn) = result {
                    if conn.isStream { conn.close() } else { self.loop.pool.release(conn) }
                }
                return
            }
            switch result {
            case .success(let conn):
                self.attach(conn, context: context)
            case .failure(let error) where self.req.upstreamH2 && reused && !self.req.retried:
                // The multiplexed connection closed (GOAWAY, reset) as this stream was opened on it:
                // nothing reached the endpoint; once, on another connection, outside the retry policy.
                self.req.retried = true
                self.loop.shared.metrics.upstreamStaleRetries.increment()
                self.loop.shared.logger.debug("HTTP/2 stream not opened, trying another connection", metadata: ["error": "\(error)"])
                self.dispatch(context: context)
            case .failure(let error):
                if let left = self.loop.shared.upstreamErrorLog.admit() {
                    self.loop.shared.logger.info(
                        "upstream connect failed",
                        metadata: [
                            "target": "\(target)", "error": "\(error)", "direction": "\(self.direction.label)", "suppressed": "\(left)",
                        ])
                }
                self.attemptFailed(
                    .connectFailure, error: .connectFailed, context: context, detail: "cannot connect to \(target): \(error)")
            }
        }
    }

    /// A new HTTP/1.1 connection, or a stream of a (new or existing) multiplexed HTTP/2 connection.
    private func connectUpstream(
        _ target: SocketAddress, timeout: MeshDuration, counters: ServiceCounters?
    ) -> (EventLoopFuture<UpstreamConnection>, reused: Bool) {
        let config = loop.snapshot.config
        if req.upstreamH2 {
            let (future, reused) = loop.pool.openHTTP2Stream(
                target, settings: config.http2, maxHeaderBytes: config.http.maxHeaderBytes, timeout: timeout, counters: counters)
            return (future, reused)
        }
        return (
            loop.pool.connect(target, maxHeaderBytes: config.http.maxHeaderBytes, timeout: timeout, counters: counters), false
        )
    }

    /// An attempt ended without a usable response head: feed the outlier detector, then retry if the
    /// policy and budget allow, or answer with `error`.
    private func attemptFailed(_ outcome: AttemptOutcome, error: MeshError, context: ChannelHandlerContext, detail: String) {
        releasePending()
        if hedge != nil, case .proxying = state {
            // A hedged attempt is still running: it takes over.
            if let endpoint = req.endpoint { req.service?.record(endpoint, outcome, now: Int64(NIODeadline.now().uptimeNanoseconds)) }
            promoteHedge(context: context)
            return
        }
        dropHedge()
        if case .proxying(let upstream) = state {
            upstream.owner = nil
            upstream.close()
        }
        let now = Int64(NIODeadline.now().uptimeNanoseconds)
        if let endpoint = req.endpoint { req.service?.record(endpoint, outcome, now: now) }
        if let reason = retryReason(for: outcome) {
            scheduleRetry(reason: reason, context: context)
            return
        }
        loop.shared.logger.info(
            "upstream attempt failed", metadata: ["direction": "\(direction.label)", "error": "\(error.rawValue)", "detail": "\(detail)"])
        reply(error, context: context, detail: detail)
    }

    /// The retry reason when this request may be retried after `outcome`; counts why not otherwise.
    private func retryReason(for outcome: AttemptOutcome) -> String? {
        guard direction == .outbound, let rs = req.routeState, let service = req.service else { return nil }
        let policy = rs.retry
        guard let reason = policy.retryReason(for: outcome) else { return nil }
        let skipped = service.metrics.retriesSkipped
        guard req.attempts < policy.attempts else {
            skipped["attempts"]?.increment()
            return nil
        }
        // Nothing reached the endpoint when the head was never sent (connect failure, or a per-try
        // timeout while connecting): any method may go again, with the parts still pending.
        if req.sentToUpstream {
            guard req.method.isIdempotent || policy.retryNonIdempotent else {
                skipped["non-idempotent"]?.increment()
                return nil
            }
            guard req.replayable else {
                skipped["body-too-large"]?.increment()
                return nil
            }
        }
        guard NIODeadline.now() + .milliseconds(1) < req.deadline else {
            skipped["deadline"]?.increment()
            return nil
        }
        if !req.countedRetry, service.limits.admitRetry(retries: service.counters.activeRetries.load(ordering: .relaxed)) != nil {
            skipped["limit"]?.increment()
            return nil
        }
        guard rs.tryRetry(now: Int64(NIODeadline.now().uptimeNanoseconds)) else {
            skipped["budget"]?.increment()
            return nil
        }
        return reason
    }

    /// Waits a jittered backoff, then sends the request to another endpoint when there is one.
    private func scheduleRetry(reason: String, context: ChannelHandlerContext) {
        guard let service = req.service, let rs = req.routeState else { return }
        let label = Int(reason) != nil ? "status" : (GRPCStatus(name: reason) != nil ? "grpc" : reason)
        service.metrics.retries[label]?.increment()
        if !req.countedRetry {
            req.countedRetry = true
            service.counters.activeRetries.wrappingIncrement(ordering: .relaxed)
        }
        if let endpoint = req.endpoint {
            endpoint.finished(
                latencyNanos: req.responseHeadNanos.map { $0 - Int64(req.started.uptimeNanoseconds) },
                now: Int64(NIODeadline.now().uptimeNanoseconds))
            req.previousEndpoint = endpoint
            req.endpoint = nil
        }
        req.retries += 1
        // Parts already sent are replayed from the buffer; unsent ones are still pending.
        if req.sentToUpstream { pending = CircularBuffer(req.replay) }
        let delay = rs.retry.backoff.delay(retry: req.retries, using: &loop.rng)
        let task = context.eventLoop.assumeIsolated().scheduleTask(in: .nanoseconds(delay.nanoseconds)) { [self] in
            self.retryNow()
        }
        state = .backoff(task)
    }

    private func retryNow() {
        guard case .backoff = state, let context, let service = req.service else { return }
        let now = Int64(NIODeadline.now().uptimeNanoseconds)
        // Prefer an endpoint other than the one that just failed.
        var choice: Int?
        for _ in 0..<4 {
            choice = service.balancer.pick(hash: req.hash, now: now, using: &loop.rng)
            if let c = choice, service.endpoints[c] !== req.previousEndpoint { break }
            if req.hash != nil { req.hash = StableHash.mix(req.hash! &+ UInt64(req.retries)) }
        }
        guard let index = choice else {
            reply(.noEndpoints, context: context, detail: "service '\(service.name)' has no endpoints")
            return
        }
        let endpoint = service.endpoints[index]
        req.endpoint = endpoint
        req.target = endpoint.address
        req.head.headers.replaceOrAdd(name: HeaderPolicy.destinationHeader, value: endpoint.destinationHeader)
        state = .connecting
        beginAttempt(context: context)
    }

    private func attach(_ conn: UpstreamConnection, context: ChannelHandlerContext) {
        conn.owner = self
        conn.pool = loop.pool
        conn.uses += 1
        state = .proxying(conn)
        if req.expectContinue && !req.requestEnded {
            context.writeAndFlush(wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: .continue))), promise: nil)
        }
        conn.write(.head(req.head))
        req.sentToUpstream = true
        while let part = pending.popFirst() { forward(part, to: conn, flush: false) }
        conn.flush()
        if readPending {
            readPending = false
            if conn.isWritable { context.read() } else { readPending = true }
        }
    }

    private func forward(_ part: HTTPServerRequestPart, to upstream: UpstreamConnection, flush: Bool = true) {
        switch part {
        case .head: break
        case .body(let buffer):
            req.bodyForwarded = true
            req.lastActivity = .now()
            upstream.write(.body(.byteBuffer(buffer)))
            upstreamNeedsFlush = true
        case .end(let trailers):
            if flush { upstream.writeAndFlush(.end(trailers)) } else { upstream.write(.end(trailers)) }
            upstreamNeedsFlush = false
            if req.responseEnded { completeExchange() }
        }
    }

    // MARK: - UpstreamOwner

    var downstreamWritable: Bool { context?.channel.isWritable ?? false }

    func upstreamRead(_ part: HTTPClientResponsePart, from conn: UpstreamConnection) {
        guard let context else { return }
        if conn === hedge {
            hedgeRead(part, conn: conn, context: context)
            return
        }
        guard case .proxying(let primary) = state, primary === conn else { return }
        switch part {
        case .head(var head):
            let nowNanos = Int64(NIODeadline.now().uptimeNanoseconds)
            req.lastActivity = .now()
            req.responseHeadNanos = nowNanos
            let status = Int(head.status.code)
            if direction == .outbound {
                let grpc = head.headers.first(name: "grpc-status").flatMap { Int($0) }
                if status == 200, grpc == nil, let rs = req.routeState, rs.retry.needsTrailers,
                    req.attempts < rs.retry.attempts,
                    head.headers.first(name: "content-type")?.hasPrefix("application/grpc") == true
                {
                    // gRPC puts its status in the trailers: hold this response until they arrive.
                    dropHedge()
                    req.heldHead = head
                    req.heldBody.removeAll()
                    req.heldBytes = 0
                    return
                }
                let outcome = AttemptOutcome.response(status: status, grpcStatus: grpc)
                if let endpoint = req.endpoint { req.service?.record(endpoint, outcome, now: nowNanos) }
                if status >= 400 || grpc != nil, hedge != nil, req.routeState?.retry.retryReason(for: outcome) != nil {
                    // The hedged attempt is still running: it becomes the request's attempt.
                    promoteHedge(context: context)
                    return
                }
                if status >= 400 || grpc != nil, let reason = retryReason(for: outcome) {
                    // Not forwarded: this attempt's response is dropped with its connection.
                    if case .proxying(let upstream) = state {
                        upstream.owner = nil
                        upstream.close()
                    }
                    scheduleRetry(reason: reason, context: context)
                    return
                }
            }
            dropHedge()
            if req.grpc, let g = GRPC.status(head.headers.first(name: "grpc-status")) { req.grpcStatus = g }
            if status == 101, req.upgrade != nil {
                // Switch once the decoder has delivered this response's end (it comes right after).
                req.switchingHead = head
                return
            }
            if req.upgrade != nil {
                // Upgrade refused: the request decoder stopped at the upgrade, so this connection ends
                // with this response.
                req.keepAlive = false
            }
            req.responseStarted = true
            req.status = status
            head.headers.meshStripHopByHop(head.headers.meshScan(), removeExpect: false)
            head.version = .http1_1
            if (!req.keepAlive || quiescing) && !multiplexed { head.headers.add(name: "connection", value: "close") }
            if multiplexed && req.grpc && req.grpcStatus != nil {
                // A trailers-only gRPC response: it must reach the client as one HEADERS frame that
                // ends the stream, so it waits for its end (which follows in the same read).
                trailersOnlyHead = head
                return
            }
            context.write(wrapOutboundOut(.head(head)), promise: nil)
        case .body(let buffer):
            req.lastActivity = .now()
            if let head = trailersOnlyHead {
                trailersOnlyHead = nil
                context.write(wrapOutboundOut(.head(head)), promise: nil)
            }
            if req.heldHead != nil {
                req.heldBytes += buffer.readableBytes
                req.heldBody.append(buffer)
                if req.heldBytes > (req.routeState?.retry.bufferBytes ?? 0) {
                    // Too large to hold: stream it; this attempt can no longer be retried.
                    releaseHeldResponse(context: context)
                }
                return
            }
            context.write(wrapOutboundOut(.body(.byteBuffer(buffer))), promise: nil)
        case .end(let trailers):
            if req.heldHead != nil, direction == .outbound, case .proxying(let upstream) = state {
                let grpc = trailers?.first(name: "grpc-status").flatMap { Int($0) }
                let outcome = AttemptOutcome.response(status: 200, grpcStatus: grpc)
                let now = Int64(NIODeadline.now().uptimeNanoseconds)
                if let endpoint = req.endpoint { req.service?.record(endpoint, outcome, now: now) }
                if req.requestEnded, let reason = retryReason(for: outcome) {
                    // The exchange completed cleanly: the connection goes back to the pool.
                    req.heldHead = nil
                    req.heldBody.removeAll()
                    upstream.owner = nil
                    loop.pool.release(upstream)
                    state = .connecting
                    scheduleRetry(reason: reason, context: context)
                    return
                }
                releaseHeldResponse(context: context)
            }
            if let head = req.switchingHead, let upgrade = req.upgrade, case .proxying(let upstream) = state {
                req.switchingHead = nil
                switchToTunnel(head, upgrade: upgrade, upstream: upstream, context: context)
                return
            }
            if req.grpc, let g = GRPC.status(trailers?.first(name: "grpc-status")) { req.grpcStatus = g }
            req.responseEnded = true
            if req.requestEnded, case .proxying(let upstream) = state {
                // Done both ways: the upstream goes back first (ending an HTTP/2 stream may close
                // its channel right inside the write below).
                releaseUpstream(upstream)
                writeResponseEnd(trailers, context: context)
                goIdleOrClose()
                return
            }
            writeResponseEnd(trailers, context: context)
            if case .proxying(let upstream) = state {
                // An early response (e.g. 413): the upstream will not read the rest; drop it.
                upstream.close()
                finishRequest(status: req.status, error: nil, reuse: false)
                discarded = 0
                state = .discarding
            }
        }
    }

    func upstreamReadComplete(from conn: UpstreamConnection) {
        if conn !== hedge { context?.flush() }
    }

    func upstreamWritabilityChanged(writable: Bool, from conn: UpstreamConnection) {
        if conn === hedge { return }
        if writable && readPending, let context {
            readPending = false
            context.read()
        }
    }

    func upstreamClosed(error: Error?, from conn: UpstreamConnection) {
        if conn === hedge {
            // The hedged attempt broke: the first attempt carries on.
            let now = Int64(NIODeadline.now().uptimeNanoseconds)
            if let e = hedgeEndpoint { req.service?.record(e, .reset, now: now) }
            dropHedge()
            return
        }
        guard case .proxying(let upstream) = state, upstream === conn, let context else { return }
        if !req.responseStarted && hedge != nil {
            if let endpoint = req.endpoint { req.service?.record(endpoint, .reset, now: Int64(NIODeadline.now().uptimeNanoseconds)) }
            promoteHedge(context: context)
            return
        }
        if req.responseStarted {
            if !req.responseEnded {
                // The backend died mid-response: the client must see a broken response, never a
                // silently truncated one.
                loop.shared.logger.warning(
                    "upstream closed mid-response",
                    metadata: ["target": "\(upstream.address)", "error": "\(error.map { "\($0)" } ?? "eof")"])
                loop.shared.metrics.error(.upstreamReset, direction).increment()
                if req.grpc && multiplexed {
                    // A gRPC client gets a status, not a reset stream: UNAVAILABLE in the trailers.
                    endGRPCCall(.upstreamReset, detail: "upstream \(upstream.address) closed mid-response", context: context)
                    return
                }
                finishRequest(status: req.status, error: .upstreamReset, reuse: false)
                state = .closed
                context.close(promise: nil)
            }
            return
        }
        // A kept-alive connection the peer closed just as we reused it: safe to replay an idempotent
        // request whose body we have not started sending, once, on a new connection.
        if req.reusedConnection && !req.retried && !req.bodyForwarded && req.method.isIdempotent {
            req.retried = true
            loop.shared.metrics.upstreamStaleRetries.increment()
            dispatchRetry(context: context)
            return
        }
        let kind: MeshError = error.map { $0 is HTTPParserError } == true ? .upstreamProtocol : .upstreamReset
        attemptFailed(
            .reset, error: kind, context: context,
            detail: "upstream \(upstream.address) closed before responding: \(error.map { "\($0)" } ?? "eof")")
    }

    private func dispatchRetry(context: ChannelHandlerContext) {
        state = .connecting
        if req.requestEnded { pending.append(.end(nil)) }
        dispatch(context: context)
    }

    /// Sends a held response's head and body on, and streams from here.
    private func releaseHeldResponse(context: ChannelHandlerContext) {
        guard var head = req.heldHead else { return }
        req.heldHead = nil
        req.responseStarted = true
        req.status = Int(head.status.code)
        head.headers.meshStripHopByHop(head.headers.meshScan(), removeExpect: false)
        head.version = .http1_1
        if !req.keepAlive || quiescing { head.headers.add(name: "connection", value: "close") }
        context.write(wrapOutboundOut(.head(head)), promise: nil)
        for b in req.heldBody { context.write(wrapOutboundOut(.body(.byteBuffer(b))), promise: nil) }
        req.heldBody.removeAll()
        req.heldBytes = 0
    }

    // MARK: - Upgrade

    /// `101 Switching Protocols`: forward it, then both connections leave HTTP and become a byte pipe
    /// (GlueHandler pair); bytes either decoder already read are passed on, not dropped.
    private func switchToTunnel(
        _ head: HTTPResponseHead, upgrade: String, upstream: UpstreamConnection, context: ChannelHandlerContext
    ) {
        var head = head
        head.headers.meshStripHopByHop(head.headers.meshScan(), removeExpect: false)
        head.headers.replaceOrAdd(name: "upgrade", value: head.headers.first(name: "upgrade") ?? upgrade)
        head.headers.replaceOrAdd(name: "connection", value: "upgrade")
        head.version = .http1_1
        req.status = 101
        context.write(wrapOutboundOut(.head(head)), promise: nil)
        context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
        finishRequest(status: 101, error: nil, reuse: false)
        loop.shared.metrics.upgrades.increment()
        let (down, up) = GlueHandler.matchedPair()
        down.loop = loop
        down.idleTimeout = req.service?.idleTimeout ?? loop.snapshot.config.upstream.idleTimeout
        state = .closed
        do {
            let sync = context.pipeline.syncOperations
            _ = context.channel.setOption(.allowRemoteHalfClosure, value: true)
            try sync.addHandler(down)
            try upstream.becomeTunnel(up)
            sync.removeHandler(context: context, promise: nil)
            if let encoder = try? sync.context(handlerType: HTTPResponseEncoder.self) {
                sync.removeHandler(context: encoder, promise: nil)
            }
            if let decoder = try? sync.context(handlerType: ByteToMessageHandler<HTTPRequestDecoder>.self) {
                sync.removeHandler(context: decoder, promise: nil)
            }
            // Bytes either decoder held reach the glue when its removal completes (after this read
            // cycle), without a read-complete: flush both sides on the next loop turn.
            let downstream = context.channel
            context.eventLoop.assumeIsolated().execute {
                downstream.flush()
                upstream.channelFlush()
            }
            context.channel.read()
            upstream.channelRead()
        } catch {
            loop.shared.logger.warning("upgrade switch failed", metadata: ["error": "\(error)"])
            upstream.close()
            context.close(promise: nil)
        }
    }

    // MARK: - Hedging

    /// After `retry.hedgeAfter` without a response head, a second attempt goes to another endpoint;
    /// the first good response head wins and the other attempt is closed. Only for complete requests
    /// whose body is buffered, once per request, within the retry budget.
    private func maybeHedge(now: NIODeadline, context: ChannelHandlerContext) {
        guard case .proxying = state, !req.responseStarted, !req.hedged, hedge == nil, !hedgeConnecting,
            let rs = req.routeState, let after = rs.retry.hedgeAfter, let service = req.service,
            now > req.attemptStarted + .nanoseconds(after.nanoseconds)
        else { return }
        req.hedged = true
        guard req.requestEnded, req.replayable, req.attempts < rs.retry.attempts,
            req.method.isIdempotent || rs.retry.retryNonIdempotent
        else { return }
        let nanos = Int64(now.uptimeNanoseconds)
        var choice: Int?
        for _ in 0..<4 {
            choice = service.balancer.pick(hash: nil, now: nanos, using: &loop.rng)
            if let c = choice, service.endpoints[c] !== req.endpoint { break }
            choice = nil
        }
        guard let index = choice else { return }  // no other endpoint: nothing to hedge to
        guard rs.tryRetry(now: nanos) else {
            service.metrics.retriesSkipped["budget"]?.increment()
            return
        }
        service.metrics.retries["hedge"]?.increment()
        let endpoint = service.endpoints[index]
        var head = req.head
        head.headers.replaceOrAdd(name: HeaderPolicy.destinationHeader, value: endpoint.destinationHeader)
        endpoint.started()
        hedgeEndpoint = endpoint
        let send: (UpstreamConnection) -> Void = { [self] conn in
            conn.owner = self
            conn.pool = self.loop.pool
            conn.uses += 1
            self.hedge = conn
            conn.write(.head(head))
            for part in self.req.replay {
                switch part {
                case .body(let b): conn.write(.body(.byteBuffer(b)))
                case .end(let t): conn.write(.end(t))
                case .head: break
                }
            }
            conn.flush()
        }
        if !req.upstreamH2, let conn = loop.pool.lease(endpoint.address) {
            send(conn)
            return
        }
        hedgeConnecting = true
        let serial = self.serial
        connectUpstream(endpoint.address, timeout: service.connectTimeout, counters: service.counters).0
            .assumeIsolated().whenComplete { [self] result in
                self.hedgeConnecting = false
                guard self.serial == serial, case .proxying = self.state, !self.req.responseStarted, self.hedgeEndpoint === endpoint
                else {
                    if case .success(let conn) = result { conn.close() }
                    return
                }
                switch result {
                case .success(let conn): send(conn)
                case .failure:
                    service.record(endpoint, .connectFailure, now: Int64(NIODeadline.now().uptimeNanoseconds))
                    self.dropHedge()
                }
            }
    }

    private func hedgeRead(_ part: HTTPClientResponsePart, conn: UpstreamConnection, context: ChannelHandlerContext) {
        guard case .head(let head) = part else { return }
        let status = Int(head.status.code)
        let grpc = head.headers.first(name: "grpc-status").flatMap { Int($0) }
        let outcome = AttemptOutcome.response(status: status, grpcStatus: grpc)
        if (status >= 400 || grpc != nil) && req.routeState?.retry.retryReason(for: outcome) != nil {
            if let e = hedgeEndpoint { req.service?.record(e, outcome, now: Int64(NIODeadline.now().uptimeNanoseconds)) }
            dropHedge()  // not a good answer: the first attempt may still bring one
            return
        }
        // The hedged attempt answered first: it becomes the request's attempt.
        promoteHedge(context: context)
        upstreamRead(part, from: conn)
    }

    /// Closes the first attempt and makes the hedged one the request's attempt.
    private func promoteHedge(context: ChannelHandlerContext) {
        guard let conn = hedge else { return }
        if case .proxying(let primary) = state {
            primary.owner = nil
            primary.close()
        }
        req.endpoint?.finished(latencyNanos: nil, now: Int64(NIODeadline.now().uptimeNanoseconds))
        req.endpoint = hedgeEndpoint
        req.target = conn.address
        hedge = nil
        hedgeEndpoint = nil
        state = .proxying(conn)
    }

    private func dropHedge() {
        hedgeEndpoint?.finished(latencyNanos: nil, now: Int64(NIODeadline.now().uptimeNanoseconds))
        hedgeEndpoint = nil
        if let conn = hedge {
            conn.owner = nil
            conn.close()
            hedge = nil
        }
    }

    // MARK: - Completion

    /// Request and response both complete: return the upstream connection and go idle.
    private func completeExchange() {
        guard case .proxying(let upstream) = state else { return }
        releaseUpstream(upstream)
        goIdleOrClose()
    }

    /// The exchange is complete: the request is accounted and the upstream goes back to the pool.
    private func releaseUpstream(_ upstream: UpstreamConnection) {
        upstream.owner = nil
        finishRequest(status: req.status, error: nil, reuse: true)
        loop.pool.release(upstream)
        state = .idle(since: .now())
    }

    private func goIdleOrClose() {
        if multiplexed {
            // One request per stream: the stream closes once both of its ends are done.
            state = .closed
            return
        }
        connectionGuard.sawBytes = !pipelined.isEmpty
        if req.keepAlive && !quiescing {
            state = .idle(since: .now())
            if !pipelined.isEmpty, let context { drainPipelined(context: context) }
        } else {
            state = .closed
            pipelined.removeAll()
            context?.close(promise: nil)
        }
    }

    /// The attempt is connected, failed, or the request ended: its `maxPending` slot is free again.
    private func releasePending() {
        guard req.countedPending else { return }
        req.countedPending = false
        req.service?.counters.pending.wrappingDecrement(ordering: .relaxed)
    }

    private func finishRequest(status: Int, error: MeshError?, reuse: Bool) {
        releasePending()
        dropHedge()
        cancelAttemptTimers()
        if let endpoint = req.endpoint {
            // The balancer learns the time to the response head (nil when there was none).
            endpoint.finished(
                latencyNanos: req.responseHeadNanos.map { $0 - Int64(req.started.uptimeNanoseconds) },
                now: Int64(NIODeadline.now().uptimeNanoseconds))
            req.endpoint = nil
        }
        if let service = req.service, direction == .outbound {
            if req.countedActive {
                req.countedActive = false
                service.counters.activeRequests.wrappingDecrement(ordering: .relaxed)
            }
            if req.countedRetry {
                req.countedRetry = false
                service.counters.activeRetries.wrappingDecrement(ordering: .relaxed)
            }
        }
        req.replay.removeAll()
        let elapsed = NIODeadline.now() - req.started
        if let service = req.service {
            service.metrics.requests[MeshMetrics.statusClassIndex(status)].increment()
            service.latency.record(nanoseconds: elapsed.nanoseconds)
            if req.grpc {
                // A client that gave up: DEADLINE_EXCEEDED once its grpc-timeout passed, else CANCELLED.
                let cancelled = req.grpcDeadline && NIODeadline.now() >= req.deadline ? 4 : 1
                let code = req.grpcStatus ?? (status == 499 ? cancelled : error?.grpcStatus ?? 2)  // 2: UNKNOWN
                service.metrics.grpcCounter(code).increment()
            }
        }
        if loop.snapshot.config.accessLog {
            loop.accessLog.append(
                AccessLog.line(
                    direction: direction.label, method: req.method.rawValue, authority: String(req.authority),
                    path: String(req.path),
                    status: status, service: req.service?.name, target: req.target.map(MeshRuntime.hostPort),
                    durationNanos: elapsed.nanoseconds, error: error?.rawValue, client: clientIP))
        }
        req.service = nil
    }

    /// meshd answers itself (no route, connect failure, timeout...): a small text body and the
    /// `x-meshd-error` header; the connection stays open when the request has been read completely.
    private func reply(_ error: MeshError, context: ChannelHandlerContext, detail: String, retryAfter: Int? = nil) {
        switch state {
        case .proxying(let upstream): upstream.close()
        case .backoff(let task): task.cancel()
        default: break
        }
        pending.removeAll()
        // Not waiting for an upstream any more (a stream may close inside the writes below).
        state = .discarding
        loop.shared.metrics.error(error, direction).increment()
        if req.grpc {
            grpcReply(error, context: context, detail: detail)
            return
        }
        finishRequest(status: error.status, error: error, reuse: false)
        var headers = HTTPHeaders()
        let body = "meshd: \(detail)\n"
        headers.add(name: MeshError.headerName, value: error.rawValue)
        headers.add(name: "content-type", value: "text/plain; charset=utf-8")
        headers.add(name: "content-length", value: String(body.utf8.count))
        if let retryAfter { headers.add(name: "retry-after", value: String(retryAfter)) }
        if !req.keepAlive || quiescing { headers.add(name: "connection", value: "close") }
        var head = HTTPResponseHead(version: .http1_1, status: HTTPResponseStatus(statusCode: error.status), headers: headers)
        head.status = HTTPResponseStatus(statusCode: error.status, reasonPhrase: error.reason)
        context.write(wrapOutboundOut(.head(head)), promise: nil)
        context.write(wrapOutboundOut(.body(.byteBuffer(context.channel.allocator.buffer(string: body)))), promise: nil)
        req.responseStarted = true
        req.responseEnded = true
        context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
        if req.requestEnded {
            goIdleOrClose()
        } else {
            // The rest of the request body is read and dropped (up to maxDiscardBytes), then the
            // connection serves the next request.
            discarded = 0
            state = .discarding
        }
    }

    /// The response's end, after its head — or, for a held trailers-only gRPC head, both as one
    /// HEADERS frame with END_STREAM, written below NIO's HTTP/1 codec (which would split them).
    private func writeResponseEnd(_ trailers: HTTPHeaders?, context: ChannelHandlerContext) {
        guard let head = trailersOnlyHead else {
            context.writeAndFlush(wrapOutboundOut(.end(trailers)), promise: nil)
            return
        }
        trailersOnlyHead = nil
        guard trailers == nil,
            let codec = try? context.pipeline.syncOperations.context(handlerType: HTTP2FramePayloadToHTTP1ServerCodec.self)
        else {
            context.write(wrapOutboundOut(.head(head)), promise: nil)
            context.writeAndFlush(wrapOutboundOut(.end(trailers)), promise: nil)
            return
        }
        // Pseudo-headers come first.
        var headers: HPACKHeaders = [":status": String(head.status.code)]
        headers.add(contentsOf: HPACKHeaders(httpHeaders: head.headers, normalizeHTTPHeaders: true))
        headers.remove(name: "content-length")  // NIO's codec adds 0 for a head that ended the stream
        codec.writeAndFlush(NIOAny(HTTP2Frame.FramePayload.headers(.init(headers: headers, endStream: true))), promise: nil)
    }

    /// meshd's reply to a gRPC call: HTTP 200 with the status in `grpc-status` / `grpc-message` (and
    /// `x-meshd-error`). On HTTP/2 it is "trailers-only" (see `writeResponseEnd`).
    private func grpcReply(_ error: MeshError, context: ChannelHandlerContext, detail: String) {
        req.grpcStatus = error.grpcStatus
        finishRequest(status: 200, error: error, reuse: false)
        let message = GRPC.percentEncode("meshd: " + detail)
        req.responseStarted = true
        req.responseEnded = true
        var headers: HTTPHeaders = ["content-type": "application/grpc", MeshError.headerName: error.rawValue]
        let status: HTTPHeaders = ["grpc-status": String(error.grpcStatus), "grpc-message": message]
        if multiplexed {
            // Trailers-only: the status goes in the one HEADERS frame.
            headers.add(contentsOf: status)
            trailersOnlyHead = HTTPResponseHead(version: .http1_1, status: .ok, headers: headers)
            writeResponseEnd(nil, context: context)
        } else {
            if !req.keepAlive || quiescing { headers.add(name: "connection", value: "close") }
            context.write(wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: .ok, headers: headers))), promise: nil)
            context.writeAndFlush(wrapOutboundOut(.end(status)), promise: nil)
        }
        if req.requestEnded {
            goIdleOrClose()
        } else {
            discarded = 0
            state = .discarding
        }
    }

    /// A gRPC call whose response is under way cannot get a new head: it ends with `error`'s status
    /// in its trailers, and the upstream side (if any) is dropped.
    private func endGRPCCall(_ error: MeshError, detail: String, context: ChannelHandlerContext) {
        if case .proxying(let upstream) = state {
            upstream.owner = nil
            upstream.close()
        }
        req.grpcStatus = error.grpcStatus
        req.responseEnded = true
        finishRequest(status: req.status, error: error, reuse: false)
        let trailers: HTTPHeaders = [
            "grpc-status": String(error.grpcStatus), "grpc-message": GRPC.percentEncode("meshd: " + detail),
            MeshError.headerName: error.rawValue,
        ]
        context.writeAndFlush(wrapOutboundOut(.end(trailers)), promise: nil)
        if req.requestEnded {
            state = .closed
        } else {
            discarded = 0
            state = .discarding
        }
    }

    private func completeLocalReply(context: ChannelHandlerContext) {
        goIdleOrClose()
    }

    /// A request that cannot be parsed: reply if no response is under way, then close.
    private func protocolFailure(_ error: MeshError, context: ChannelHandlerContext) {
        switch state {
        case .idle:
            req = RequestState()
            req.keepAlive = false
            loop.shared.metrics.error(error, direction).increment()
            var headers = HTTPHeaders()
            let body = "meshd: \(error == .headersTooLarge ? "request head larger than http.maxHeaderBytes" : "malformed HTTP request")\n"
            headers.add(name: MeshError.headerName, value: error.rawValue)
            headers.add(name: "content-type", value: "text/plain; charset=utf-8")
            headers.add(name: "content-length", value: String(body.utf8.count))
            headers.add(name: "connection", value: "close")
            let head = HTTPResponseHead(
                version: .http1_1, status: HTTPResponseStatus(statusCode: error.status, reasonPhrase: error.reason), headers: headers)
            state = .closed
            context.write(wrapOutboundOut(.head(head)), promise: nil)
            context.write(wrapOutboundOut(.body(.byteBuffer(context.channel.allocator.buffer(string: body)))), promise: nil)
            context.writeAndFlush(wrapOutboundOut(.end(nil))).assumeIsolated().whenComplete { _ in
                context.close(promise: nil)
            }
        case .proxying(let upstream):
            upstream.close()
            loop.shared.metrics.error(error, direction).increment()
            finishRequest(status: req.responseStarted ? req.status : error.status, error: error, reuse: false)
            state = .closed
            context.close(promise: nil)
        case .backoff(let task):
            task.cancel()
            loop.shared.metrics.error(error, direction).increment()
            finishRequest(status: error.status, error: error, reuse: false)
            state = .closed
            context.close(promise: nil)
        case .connecting, .discarding:
            loop.shared.metrics.error(error, direction).increment()
            finishRequest(status: error.status, error: error, reuse: false)
            state = .closed
            context.close(promise: nil)
        case .closed:
            break
        }
    }

    // MARK: - Timeouts (checked by the loop every tick)

    func checkTimeouts(now: NIODeadline) {
        guard let context else { return }
        let http = loop.snapshot.config.http
        switch state {
        case .idle(let since):
            if connectionGuard.sawBytes || firstRequest {
                if now > since + .nanoseconds(http.headerReadTimeout.nanoseconds) {
                    loop.shared.metrics.error(.headerTimeout, direction).increment()
                    loop.shared.logger.info(
                        "closing connection: request head not received in time",
                        metadata: ["client": "\(clientIP)", "timeout": "\(http.headerReadTimeout)"])
                    state = .closed
                    if connectionGuard.sawBytes {
                        protocolFailureTimeout(context: context)
                    } else {
                        context.close(promise: nil)
                    }
                }
            } else if now > since + .nanoseconds(http.idleTimeout.nanoseconds) {
                state = .closed
                context.close(promise: nil)
            }
        case .connecting, .proxying, .backoff:
            if !req.responseStarted && req.heldHead == nil && now > req.deadline {
                // The route's total timeout, retries included: no more attempts.
                loop.shared.logger.info(
                    "upstream timeout", metadata: ["target": "\(req.target?.description ?? "?")", "authority": "\(req.authority)"])
                reply(.upstreamTimeout, context: context, detail: "no response from \(req.target?.description ?? "upstream") in time")
            } else if !req.responseStarted && req.heldHead == nil && now > req.tryDeadline, !isBackoff {
                req.tryDeadline = .distantFuture
                attemptFailed(
                    .timeout, error: .upstreamTimeout, context: context,
                    detail: "no response from \(req.target?.description ?? "upstream") within the per-try timeout")
            } else if req.grpcDeadline && req.responseStarted && !req.responseEnded && now > req.deadline {
                // The call's grpc-timeout passed while its response streams: DEADLINE_EXCEEDED.
                loop.shared.metrics.error(.upstreamTimeout, direction).increment()
                if multiplexed {
                    endGRPCCall(.upstreamTimeout, detail: "deadline (grpc-timeout) exceeded", context: context)
                } else {
                    if case .proxying(let upstream) = state { upstream.close() }
                    finishRequest(status: req.status, error: .upstreamTimeout, reuse: false)
                    state = .closed
                    context.close(promise: nil)
                }
            } else if case .proxying = state, !req.responseStarted, req.routeState?.retry.hedgeAfter != nil, !req.hedged {
                maybeHedge(now: now, context: context)
            } else if case .proxying(let upstream) = state, let service = req.service,
                now - req.lastActivity > .nanoseconds(service.idleTimeout.nanoseconds)
            {
                // No byte either way for the idle timeout: the exchange is stuck.
                loop.shared.logger.info(
                    "upstream idle timeout", metadata: ["target": "\(upstream.address)", "timeout": "\(service.idleTimeout)"])
                if req.responseStarted {
                    upstream.owner = nil
                    upstream.close()
                    loop.shared.metrics.error(.idleTimeout, direction).increment()
                    finishRequest(status: req.status, error: .idleTimeout, reuse: false)
                    state = .closed
                    context.close(promise: nil)
                } else {
                    reply(.idleTimeout, context: context, detail: "no byte from \(upstream.address) for \(service.idleTimeout)")
                }
            }
        case .discarding:
            // meshd answered; the rest of the request body never came: stop waiting for it (on
            // HTTP/2 the stream is reset, which frees it for the connection's idle timeout).
            if now - req.lastActivity > .nanoseconds(http.idleTimeout.nanoseconds) {
                loop.shared.metrics.error(.idleTimeout, direction).increment()
                state = .closed
                context.close(promise: nil)
            }
        case .closed:
            break
        }
    }

    private func protocolFailureTimeout(context: ChannelHandlerContext) {
        connectionGuard.writeRawAndClose(
            "HTTP/1.1 408 Request Timeout\r\n\(MeshError.headerName): \(MeshError.headerTimeout.rawValue)\r\n"
                + "content-length: 0\r\nconnection: close\r\n\r\n")
    }
}

extension HTTPProxyHandler {
    /// `http://host:port/path?q` → (`host:port`, `/path?q`); nil when `uri` is not absolute-form.
    static func splitAbsoluteForm(_ uri: Substring) -> (Substring, Substring)? {
        let bytes = uri.utf8
        var i = bytes.startIndex
        // scheme ":" "//"
        while i != bytes.endIndex, bytes[i] != UInt8(ascii: ":") {
            let c = bytes[i]
            let ok = (c >= 97 && c <= 122) || (c >= 65 && c <= 90) || (c >= 48 && c <= 57) || c == 43 || c == 45 || c == 46
            if !ok { return nil }
            i = bytes.index(after: i)
        }
        guard i != bytes.endIndex else { return nil }
        let afterColon = bytes.index(after: i)
        guard bytes[afterColon...].starts(with: "//".utf8) else { return nil }
        let hostStart = bytes.index(afterColon, offsetBy: 2)
        let slash = bytes[hostStart...].firstIndex(where: { $0 == UInt8(ascii: "/") || $0 == UInt8(ascii: "?") }) ?? bytes.endIndex
        let host = uri[hostStart..<slash]
        let rest = uri[slash...]
        return (host, rest.isEmpty ? "/" : (rest.first == "?" ? Substring("/" + rest) : rest))
    }
}

extension HTTPMethod {
    /// RFC 9110 §9.2.2.
    var isIdempotent: Bool {
        switch self {
        case .GET, .HEAD, .OPTIONS, .TRACE, .PUT, .DELETE: return true
        default: return false
        }
    }
}
