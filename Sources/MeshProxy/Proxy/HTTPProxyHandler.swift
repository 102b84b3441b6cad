import MeshCore
import NIOCore
import NIOHTTP1

/// The downstream side of an HTTP/1.1 connection, on either listener, or of one HTTP/2 stream
/// (`multiplexed`, driven by its connection's `HTTP2DownstreamConnection`: one request per stream,
/// its heads as HPACK blocks — `IncomingHead`, `UpstreamRequestHead`, `ResponseHead`). It moves bytes
/// and carries out decisions made elsewhere:
///
/// - the request's start — route (logical) → admission → balance (concrete) → endpoint, and the head
///   rewrite — in `HTTPProxyHandler+Request.swift`, from MeshCore's route table, limiters, balancers
///   and header policy;
/// - every decision of the exchange — attempts, retries, budgets, backoff, timeouts, hedging, held
///   gRPC responses — by MeshCore's `ExchangeStateMachine`, whose actions `HTTPProxyHandler+Attempts`
///   carries out;
/// - meshd's own replies by one writer (`LocalReplyWriter.swift`), the accounting (metrics, access
///   log) in `RequestAccounting.swift`, the upgrade to a byte pipe in `Tunnel.swift`.
///
/// Request and response stream with backpressure both ways: reads are held while the partner cannot
/// take more. Upstream, a request goes as HTTP/1.1 on a pooled connection or as a stream of a
/// multiplexed HTTP/2 connection (see `UpstreamPool`).
final class HTTPProxyHandler: ChannelDuplexHandler, RemovableChannelHandler, UpstreamOwner, LoopTimed {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundIn = HTTPServerResponsePart
    typealias OutboundOut = HTTPServerResponsePart

    enum State {
        /// Waiting for a request head since `since`.
        case idle(since: NIODeadline)
        /// Routed; waiting for an upstream connection. Request parts read meanwhile are buffered.
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
    /// One stream of an HTTP/2 connection (one request, then the stream closes): not a channel
    /// handler then; `frames` delivers the stream's request parts and turns its response into frames.
    let multiplexed: Bool
    let frames: HTTP2DownstreamConnection?
    /// The stream's state, kept by `frames`.
    var h2 = DownstreamStreamState()
    var context: ChannelHandlerContext?
    var state: State = .idle(since: .now())
    var req = RequestState()
    /// Request parts read while no upstream can take them (connecting, backoff).
    var pending = HTTPProxyHandler.noParts
    /// Parts of pipelined requests read while an earlier request was in progress (bounded: reads stop
    /// as soon as one is queued, so at most one read's worth).
    var pipelined = HTTPProxyHandler.noParts
    /// The empty queue both start as: shared, so a handler (one per HTTP/2 stream) allocates a queue
    /// only when it first queues a part (copy on write).
    static let noParts = CircularBuffer<HTTPServerRequestPart>(initialCapacity: 4)
    /// Set by a graceful drain: close after the current exchange.
    var quiescing = false
    /// Increments per request: callbacks of an earlier request (a late connect) are recognised.
    var serial = 0
    /// A hedged second attempt in flight, and its endpoint.
    var hedge: UpstreamConnection?
    var hedgeEndpoint: LoopEndpoint?
    /// Precise timers for the current attempt (only on routes with perTryTimeout / hedgeAfter).
    var attemptTimers: [Scheduled<Void>] = []
    var readPending = false
    var upstreamNeedsFlush = false
    /// An HTTP/2 stream's first attempt waits for the end of the read cycle (see `startRequest`).
    var attemptDeferred = false
    var clientIP = "unknown"
    /// The client's address (node mode: the source pod, whose identity outbound mTLS presents).
    lazy var clientAddress: IPAddress? = IPAddress(clientIP)
    var firstRequest = true
    /// A trailers-only gRPC response head waiting for its end (HTTP/2 downstream only).
    var trailersOnlyHead: ResponseHead?
    /// Request-body bytes read and dropped after meshd answered early.
    var discarded = 0
    /// Past this, the rest of an answered request's body is not read: the connection is closed.
    static let maxDiscardBytes = 1 << 20

    init(direction: Direction, loop: LoopContext, connectionGuard: ConnectionGuard, frames: HTTP2DownstreamConnection? = nil) {
        self.direction = direction
        self.loop = loop
        self.connectionGuard = connectionGuard
        self.frames = frames
        self.multiplexed = frames != nil
    }

    /// What the connection knows about the request in flight; one per connection, reset per request.
    struct RequestState {
        /// The head as the upstream gets it. (A shared placeholder until a head arrives: resetting the
        /// state per request allocates nothing.)
        var head = UpstreamRequestHead.placeholder
        var method = HTTPMethod.GET
        var authority: Substring = ""
        var path: Substring = ""
        var service: LoopService?
        var endpoint: LoopEndpoint?
        var target: SocketAddress?
        /// The pool the target's connections come from (plaintext, or mTLS to another meshd).
        var pool: UpstreamPool?
        /// Set by `startRequest` (and by a local reply to a request that could not be parsed).
        var started = NIODeadline.uptimeNanoseconds(0)
        /// The exchange's decisions (see `ExchangeStateMachine`); replaced once the request is routed.
        var exchange = ExchangeStateMachine(
            plan: .init(retry: nil, idempotent: true, deadline: .max, idleTimeout: .max), now: 0)
        var status = 0
        var keepAlive = true
        var expectContinue = false
        /// When the response head arrived (uptime nanoseconds), for the balancer's latency EWMA.
        var responseHeadNanos: Int64?
        /// Outbound: the route's per-loop state (retry policy and budget, rate limits).
        var routeState: RouteState?
        var hash: UInt64?
        /// Endpoints this request's attempts went to (a retry prefers one not among them).
        var triedEndpoints: [ObjectIdentifier] = []
        /// Request parts kept for a replay (retries on a response need the request again).
        var replay: [HTTPServerRequestPart] = []
        var countedActive = false
        var countedPending = false
        /// The `Upgrade` header of an upgrade request (WebSocket...), passed through.
        var upgrade: String?
        /// A `101` head waiting for its end before the connections switch to a byte pipe.
        var switchingHead: HTTPResponseHead?
        /// A gRPC response held until its trailers say whether to retry (bounded by bufferBytes).
        var heldHead: ResponseHead?
        var heldBody: [ByteBuffer] = []
        /// A gRPC call (`content-type: application/grpc...`): meshd's own replies are gRPC-shaped.
        var grpc = false
        /// The call's status: from the response headers (trailers-only), trailers, or meshd's reply.
        var grpcStatus: Int?
        /// Upstream as a stream of a multiplexed HTTP/2 connection (else HTTP/1.1).
        var upstreamH2 = false
        /// `x-request-id` and the `traceparent` trace id (the client's, or those meshd added).
        var requestID = ""
        var traceID: Substring = ""
        /// Body bytes received from the client and sent to it.
        var bytesIn = 0
        var bytesOut = 0
    }

    static var nowNanos: Int64 { Int64(NIODeadline.now().uptimeNanoseconds) }

    /// The request parts a new attempt sends after the head: those kept for a replay, and the
    /// request's end once it was read.
    func replayParts() -> CircularBuffer<HTTPServerRequestPart> {
        var parts = CircularBuffer(req.replay)
        if req.exchange.requestEnded {
            if case .end? = parts.last {} else { parts.append(.end(nil)) }
        }
        return parts
    }

    /// Gives a connection back to the pool it came from (a pool dropped after an identity rotation is
    /// gone: its connection closes).
    static func release(_ conn: UpstreamConnection) {
        if let pool = conn.pool {
            pool.release(conn)
        } else if conn.isStream {
            conn.owner = nil
        } else {
            conn.close()
        }
    }

    // MARK: - Channel events

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        loop.register(self)
        if let ip = context.channel.remoteAddress?.ipAddress { clientIP = ip }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        loop.unregister(self)
        self.context = nil
    }

    func channelInactive(context: ChannelHandlerContext) {
        downstreamClosed()
        context.fireChannelInactive()
    }

    /// The client's side is gone: a connection closed, or an HTTP/2 stream closed (both ends done,
    /// reset by either side, or its connection closed).
    func downstreamClosed() {
        if multiplexed && (attemptDeferred || firstRequest) {
            // Reset in the same read as its HEADERS (before the first attempt started at the end of
            // the read): no upstream work was started for it.
            attemptDeferred = false
            connectionGuard.streamResetPrematurely()
        }
        let responded = req.exchange.clientLeft()
        switch state {
        case .proxying(let upstream):
            // The client left mid-exchange (the upstream is in an unknown state), or the response is
            // out (an HTTP/2 stream closes as its last frame is written).
            upstream.close()
            finishRequest(status: responded ? req.status : 499, error: nil)
        case .connecting:
            finishRequest(status: 499, error: nil)
        case .backoff(let task):
            task.cancel()
            finishRequest(status: 499, error: nil)
        default: break
        }
        state = .closed
        pending.removeAll()
        loop.unregister(self)
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
    func handle(_ part: HTTPServerRequestPart, context: ChannelHandlerContext) {
        switch part {
        case .head(let head):
            guard case .idle = state else {
                if case .closed = state { return }
                pipelined.append(part)
                return
            }
            startRequest(head, context: context)
            return
        case .body(let b):
            req.bytesIn &+= b.readableBytes
            if req.exchange.requestBody(bytes: b.readableBytes, now: Self.nowNanos) {
                req.replay.append(part)
            } else if !req.replay.isEmpty {
                req.replay.removeAll()  // too large to keep: not retried once it reached an endpoint
            }
        case .end(let trailers):
            _ = req.exchange.requestEnd(now: Self.nowNanos)
            // An end without trailers is not kept: `replayParts` adds it (most requests would
            // allocate a list for it alone).
            if req.exchange.keepsParts && trailers != nil { req.replay.append(part) }
        }
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
                    closeDownstream(context)
                    return
                }
            }
            if req.exchange.requestEnded { goIdleOrClose() }
        case .idle, .closed:
            break
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
            readDownstream(context)
        }
    }

    /// How long a drain leaves an idle keep-alive connection open for its client's next request.
    static let drainIdleGrace = TimeAmount.seconds(1)

    var isIdle: Bool {
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
            readDownstream(context)
        }
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if downstreamWritable, case .proxying(let upstream) = state {
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
        closeDownstream(context)
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let e = event as? ChannelEvent, case .inputClosed = e {
            // The client will send no more.
            req.keepAlive = false
            if isIdle && pipelined.isEmpty {
                state = .closed
                closeDownstream(context)
            } else if !multiplexed && !req.exchange.responseStarted {
                // It left before its response began — a closed connection looks just like this — so,
                // as nginx (499) and Envoy do, the request is abandoned: closing runs `channelInactive`,
                // which stops the upstream work now instead of at the route's timeout. A response
                // under way is finished (a client that only half-closed still gets all of it).
                closeDownstream(context)
            }
            return
        }
        if event is ChannelShouldQuiesceEvent {
            // Graceful drain: a busy connection closes after its response (which carries
            // `connection: close` if its head is not out yet); so does an idle one whose client sends
            // its next request within `drainIdleGrace`. Closing an idle connection at once would race
            // a request already on the wire (a keep-alive client would see it fail); one still idle
            // after the grace closes then.
            quiescing = true
            if isIdle {
                context.eventLoop.assumeIsolated().scheduleTask(in: Self.drainIdleGrace) { [self] in
                    guard isIdle, let context = self.context else { return }
                    state = .closed
                    closeDownstream(context)
                }
            }
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    // MARK: - Moving the request

    func attach(_ conn: UpstreamConnection, reused: Bool, context: ChannelHandlerContext) {
        conn.owner = self
        conn.pool = req.pool ?? loop.pool
        conn.uses += 1
        state = .proxying(conn)
        req.exchange.attached(reused: reused, now: Self.nowNanos)
        if req.expectContinue && !req.exchange.requestEnded {
            emit(.head(HTTPResponseHead(version: .http1_1, status: .continue)), flush: true, context: context)
        }
        conn.writeHead(req.head)
        while let part = pending.popFirst() { forward(part, to: conn, flush: false) }
        conn.flush()
        if readPending {
            readPending = false
            if conn.isWritable { readDownstream(context) } else { readPending = true }
        }
    }

    private func forward(_ part: HTTPServerRequestPart, to upstream: UpstreamConnection, flush: Bool = true) {
        switch part {
        case .head: break
        case .body(let buffer):
            req.exchange.bodySent(now: Self.nowNanos)
            upstream.write(.body(.byteBuffer(buffer)))
            upstreamNeedsFlush = true
        case .end(let trailers):
            if flush { upstream.writeAndFlush(.end(trailers)) } else { upstream.write(.end(trailers)) }
            upstreamNeedsFlush = false
            if req.exchange.responseEnded { completeExchange() }
        }
    }

    // MARK: - Completion

    /// Request and response both complete: return the upstream connection and go idle.
    func completeExchange() {
        guard case .proxying(let upstream) = state else { return }
        releaseUpstream(upstream)
        goIdleOrClose()
    }

    /// The exchange is complete: the request is accounted and the upstream goes back to the pool.
    func releaseUpstream(_ upstream: UpstreamConnection) {
        upstream.owner = nil
        finishRequest(status: req.status, error: nil)
        Self.release(upstream)
        state = .idle(since: .now())
    }

    /// The exchange is answered and only the rest of its request is left, to read and drop. Reads
    /// held while the exchange waited for an upstream (connecting, a retry's backoff) or for an
    /// upstream to drain resume here: otherwise that rest would never be read, and the connection
    /// would stall with the client's next request unread behind it (an upstream meshd, having sent
    /// the whole request, pools the connection and its next request waits out its timeout).
    func discardRestOfRequest(context: ChannelHandlerContext) {
        discarded = 0
        state = .discarding
        if readPending {
            readPending = false
            readDownstream(context)
        }
    }

    func goIdleOrClose() {
        if multiplexed {
            // One request per stream: the stream closes once both of its ends are done.
            state = .closed
            return
        }
        connectionGuard.sawBytes = !pipelined.isEmpty
        if req.keepAlive && !quiescing {
            state = .idle(since: .now())
            // Serves queued pipelined requests, then resumes reading: reads held while the exchange
            // waited for an upstream (one that never came: a connect failure) must not stay held.
            if let context { drainPipelined(context: context) }
        } else {
            state = .closed
            pipelined.removeAll()
            if let context { closeDownstream(context) }
        }
    }

    // MARK: - Timeouts (checked by the loop every tick, and by the attempt's precise timers)

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
                        connectionGuard.writeRawAndClose(
                            "HTTP/1.1 408 Request Timeout\r\n\(MeshError.headerName): \(MeshError.headerTimeout.rawValue)\r\n"
                                + "content-length: 0\r\nconnection: close\r\n\r\n")
                    } else {
                        closeDownstream(context)
                    }
                }
            } else if now > since + .nanoseconds(http.idleTimeout.nanoseconds) {
                state = .closed
                closeDownstream(context)
            }
        case .connecting, .proxying, .backoff:
            exchangeTimer(now: Int64(now.uptimeNanoseconds), context: context)
        case .discarding:
            // meshd answered; the rest of the request body never came: stop waiting for it (on
            // HTTP/2 the stream is reset, which frees it for the connection's idle timeout).
            if Int64(now.uptimeNanoseconds) - req.exchange.lastActivity > http.idleTimeout.nanoseconds {
                loop.shared.metrics.error(.idleTimeout, direction).increment()
                state = .closed
                closeDownstream(context)
            }
        case .closed:
            break
        }
    }
}
