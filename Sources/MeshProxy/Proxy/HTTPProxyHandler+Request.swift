import MeshCore
import NIOCore
import NIOHPACK
import NIOHTTP1

// The start of a request: route (logical) → admission → balance (concrete) → endpoint, and the head as
// the upstream gets it. Decisions come from MeshCore (route table, rate limiter, circuit-breaker
// limits, balancers, node-inbound policy, header policy); the exchange's own state machine is set up
// with the route's plan at the end.
extension HTTPProxyHandler {

    func startRequest(_ head: HTTPRequestHead, context: ChannelHandlerContext) {
        startRequest(.http1(head), context: context)
    }

    /// An HTTP/2 stream's request (`HTTP2DownstreamConnection` checked its block).
    func startRequest(_ request: H2Request, context: ChannelHandlerContext) {
        startRequest(.h2(request), context: context)
    }

    func startRequest(_ head: IncomingHead, context: ChannelHandlerContext) {
        // An HTTP/2 stream's handler serves one request: its state is still the one `init` made.
        if !(multiplexed && firstRequest) { req = RequestState() }
        firstRequest = false
        serial &+= 1
        req.started = .now()
        let startNanos = Int64(req.started.uptimeNanoseconds)
        // Until the request is routed (a local reply before that discards the rest of its body).
        req.exchange = ExchangeStateMachine(
            plan: .init(retry: nil, idempotent: true, deadline: .max, idleTimeout: .max), now: startNanos)
        req.method = head.method
        req.keepAlive = multiplexed || head.isKeepAlive
        // One pass over the headers: framing, Expect, hop-by-hop, XFF, gRPC, the meshd marks.
        let scan = head.meshScan()
        if !multiplexed && (head.method == .CONNECT || scan.isUpgradeRequest) {
            // NIO's request decoder stops parsing after an upgrade request (or CONNECT), whatever the
            // answer: unless the protocol switches, this connection ends with this exchange — every
            // answer, meshd's own included, says `connection: close`. (Kept alive, the next request
            // on it would never be read: the client would wait until its own timeout.)
            req.keepAlive = false
        }
        req.grpc = scan.grpc
        // Request identity and trace context: the client's, else new ones (added to the head below).
        let trace = TraceDecision.decide(scan.trace, rng: &loop.rng)
        req.requestID = trace.requestID
        req.traceID = trace.traceID
        let snapshot = loop.snapshot
        // RFC 9112 §3: a request line longer than the server is willing to parse gets 414.
        let lineBytes = head.method.rawValue.utf8.count + head.uri.utf8.count + 10  // SP, SP, "HTTP/1.1"
        guard lineBytes <= snapshot.config.http.maxRequestLineBytes else {
            reply(
                .uriTooLong, context: context,
                detail: "request line of \(lineBytes) bytes is over http.maxRequestLineBytes (\(snapshot.config.http.maxRequestLineBytes))")
            return
        }

        // Authority: absolute-form URI (as http_proxy clients send it) or the Host header.
        var uri = Substring(head.uri)
        var authority: Substring?
        var rewroteURI = false
        if uri.utf8.first != UInt8(ascii: "/"), let (hostPart, rest) = RequestTarget.splitAbsoluteForm(uri) {
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
        if authority == nil, let host = scan.host ?? head.authority { authority = Substring(host) }
        guard let authority, !authority.isEmpty else {
            reply(.badRequest, context: context, detail: "request has no Host header")
            return
        }
        req.authority = authority
        // On the bytes: a `Character`-level search costs about 150 instructions per byte of the target.
        let path = uri[..<(uri.utf8.firstIndex(of: UInt8(ascii: "?")) ?? uri.endIndex)]
        req.path = path

        // The fields meshd adds go after the client's, in one new list at the end (`HTTPHeaders.add`
        // checks each name for ASCII byte by byte; these are meshd's own names).
        var added: [(String, String)] = []
        added.reserveCapacity(6)
        // Names (lowercase) of client fields that do not go on (removed, or replaced by one in
        // `added`): left out when the list is rebuilt below, rather than removed at once —
        // `HTTPHeaders.remove` copies the client's list (it is shared with `head`) and compares every
        // name, for each field removed (3.5 k instructions for an `x-forwarded-for` in a request of 16
        // fields).
        var dropped: [String] = []
        func drop(_ name: String) { dropped.append(name) }
        func add(_ name: String, _ value: String) { added.append((name, value)) }
        func replaceOrAdd(_ name: String, _ value: String) {
            dropped.append(name)
            added.append((name, value))
        }
        if rewroteURI {
            // RFC 9112 §3.2.2: the absolute-form target's authority replaces any Host the client sent,
            // so the application sees the authority meshd routed on.
            replaceOrAdd("host", String(authority))
        }

        var deadline = Int64.max
        switch direction {
        case .outbound:
            let host = RouteTable.hostWithoutPort(authority)
            let method = head.method.rawValue
            var matched = snapshot.mesh.routes.match(host: host, path: path, method: method, header: { head.first(name: $0) })
            // A connection iptables redirected here (transparent capture) whose request names no known
            // authority goes to the service owning the address the application connected to, through
            // the first route to that service (its timeouts, retries and limits apply).
            var owner: Int?
            if matched == nil, let dst = connectionGuard.originalDestination, let ip = dst.ipAddress, let port = dst.port {
                owner = snapshot.mesh.owners.owner(ip: ip, port: port)
                if let owner { matched = snapshot.mesh.routes.firstRoute(toService: owner) }
            }
            guard let route = matched else {
                let dst = connectionGuard.originalDestination.map { " (original destination \(MeshRuntime.hostPort($0)))" } ?? ""
                reply(.noRoute, context: context, detail: "no route for authority '\(host)'\(dst)")
                return
            }
            deadline = startNanos + route.timeout.nanoseconds
            guard let serviceIndex = owner ?? RouteTable.pickBackend(route, using: &loop.rng) else {
                reply(.noEndpoints, context: context, detail: "route '\(route.name)' has no backend with weight")
                return
            }
            let service = loop.services[serviceIndex]
            req.service = service
            req.upstreamH2 = service.upstreamProtocol.usesHTTP2(downstreamHTTP2: multiplexed)
            let now = startNanos
            let routeState = loop.routeStates[route.index]
            req.routeState = routeState
            if let wait = routeState.admit(source: clientIP, now: now) {
                service.metrics.rateLimited.increment()
                reply(.rateLimited, context: context, detail: "rate limit of route '\(route.name)' exceeded", retryAfter: wait)
                return
            }
            if refuseOverflow(.requests, of: service, context: context) { return }
            service.counters.activeRequests.wrappingIncrement(ordering: .relaxed)
            req.countedActive = true
            routeState.budget.recordRequest(now: now)
            req.hash = service.hashKey(headers: head, clientIP: clientIP)
            guard let endpointIndex = service.balancer.pick(hash: req.hash, now: now, using: &loop.rng) else {
                reply(.noEndpoints, context: context, detail: "service '\(service.name)' has no endpoints")
                return
            }
            let endpoint = service.endpoints[endpointIndex]
            if service.tls != nil {
                guard case .pool(let pool) = loop.upstreamPool(service: service, endpoint: endpoint, source: clientAddress) else {
                    reply(
                        .forbidden, context: context, detail: "source \(clientIP) runs as no identity; service '\(service.name)' needs mTLS"
                    )
                    return
                }
                req.pool = pool
            }
            req.endpoint = endpoint
            req.target = endpoint.address
            if endpoint.namesDestination {
                if scan.destination {
                    replaceOrAdd(HeaderPolicy.destinationHeader, endpoint.destinationHeader)
                } else {
                    add(HeaderPolicy.destinationHeader, endpoint.destinationHeader)
                }
            } else if scan.destination {
                drop(HeaderPolicy.destinationHeader)
            }
            // An identity is never taken from the application: the next meshd sets it from mTLS.
            if scan.clientCert { drop(HeaderPolicy.clientCertHeader) }
        case .inbound:
            var destinationIdentity: SpiffeID?
            req.service = loop.inboundService
            deadline = startNanos + snapshot.config.upstream.requestTimeout.nanoseconds
            req.upstreamH2 = snapshot.config.inbound.appProtocol.usesHTTP2(downstreamHTTP2: multiplexed)
            if snapshot.config.mode == .node {
                // A node proxy forwards to the pod the calling meshd picked, if it is one of this node's.
                let dst: NodeInboundPolicy.Destination
                switch loop.nodeInbound.destinationAddress(head.first(name: HeaderPolicy.destinationHeader)) {
                case .success(let d): dst = d
                case .failure(let refusal):
                    reply(.destinationNotAllowed, context: context, detail: refusal.rawValue)
                    return
                }
                let addr = SocketAddress(dst.address, port: dst.port)
                if let identity = loop.identity {
                    let podWorkload = identity.podWorkload[dst.address]
                    if let tls = connectionGuard.tls, let presented = tls.workload, podWorkload != presented {
                        // The connection was opened for one workload's identity: only its pods are reachable.
                        reply(
                            .destinationNotAllowed, context: context,
                            detail: "x-meshd-dst names a pod that does not run as \(tls.local.map { "\($0)" } ?? "the identity presented")")
                        return
                    }
                    destinationIdentity = podWorkload.map { identity.workloads[$0].id }
                }
                req.target = addr
            } else {
                req.target = snapshot.appAddress
                destinationIdentity = loop.identity?.local?.id
            }
            if !snapshot.config.authorization.allowsEveryone {
                let caller = connectionGuard.tls?.peer
                let decision = snapshot.config.authorization.decide(caller: caller, destination: destinationIdentity, path: path)
                loop.authorizationCounter(decision).increment()
                guard decision.allowed else {
                    reply(
                        .forbidden, context: context,
                        detail: "\(caller.map { "\($0)" } ?? "an unauthenticated caller") may not call "
                            + "\(destinationIdentity.map { "\($0)" } ?? "this workload") (\(decision.ruleLabel))")
                    return
                }
            }
            if let tls = connectionGuard.tls {
                if scan.clientCert { drop(HeaderPolicy.clientCertHeader) }
                add(HeaderPolicy.clientCertHeader, tls.forwardedClientCert)
            } else if scan.clientCert {
                drop(HeaderPolicy.clientCertHeader)
            }
            if scan.destination { drop(HeaderPolicy.destinationHeader) }
            if scan.originalProtocol {
                // An HTTP/1.1 request that rode HTTP/2 between two meshd: HTTP/1.1 again to the app.
                drop(HeaderPolicy.originalProtocolHeader)
                if snapshot.config.inbound.appProtocol == .auto { req.upstreamH2 = false }
            }
        }

        var callDeadline = false
        if let value = scan.grpcTimeout, req.grpc, let timeout = GRPC.parseTimeout(value) {
            // The caller's deadline covers the whole call (the route's timeout only the response head).
            deadline = startNanos + timeout.nanoseconds
            callDeadline = true
        }
        // x-forwarded-for grows.
        req.expectContinue = scan.expectContinue
        if let existing = scan.forwardedFor {
            let all = scan.forwardedForCount == 1 ? existing : head["x-forwarded-for"].joined(separator: ", ")
            replaceOrAdd("x-forwarded-for", HeaderPolicy.appendingForwardedFor(existing: all, client: clientIP))
        } else {
            add("x-forwarded-for", clientIP)
        }
        if scan.host == nil && !rewroteURI { add("host", String(req.authority)) }
        if trace.dropMalformed {
            drop("traceparent")
            drop("tracestate")
        }
        if let id = trace.addRequestID { add("x-request-id", id) }
        if let tp = trace.setTraceparent { add("traceparent", tp) }
        if scan.isUpgradeRequest, let upgrade = head.first(name: "upgrade") {
            // An upgrade (WebSocket...) passes through: these two hop-by-hop headers go on.
            req.upgrade = upgrade
            replaceOrAdd("upgrade", upgrade)
            replaceOrAdd("connection", "upgrade")
            req.upstreamH2 = false  // an upgrade is HTTP/1.1 only
        }
        if scan.teTrailers && !req.upstreamH2 {
            // `TE: trailers` is kept for HTTP/2 (gRPC needs it); in HTTP/1.1 it is hop-by-hop.
            drop("te")
        }
        if direction == .outbound && req.upstreamH2 && !multiplexed {
            replaceOrAdd(HeaderPolicy.originalProtocolHeader, "HTTP/1.1")
        }
        switch head {
        case .h2(let request) where req.upstreamH2:
            // HTTP/2 on both sides: the upstream's block is made from the client's, no HTTP/1 types.
            req.head = .h2(
                HTTP2Conversion.upstreamBlock(
                    request, authority: req.authority, uri: rewroteURI ? String(uri) : nil, dropped: dropped, added: added))
        case .h2(let request):
            req.head = .http1(
                rewrite(HTTP2Conversion.http1Head(request), scan: scan, uri: rewroteURI ? uri : nil, dropped: dropped, added: added))
        case .http1(let request):
            req.head = .http1(rewrite(request, scan: scan, uri: rewroteURI ? uri : nil, dropped: dropped, added: added))
        }
        let retry = req.routeState?.retry
        req.exchange = ExchangeStateMachine(
            plan: .init(
                retry: retry, idempotent: head.method.isIdempotent, deadline: deadline, callDeadline: callDeadline,
                idleTimeout: (req.service?.idleTimeout ?? snapshot.config.upstream.idleTimeout).nanoseconds,
                upstreamHTTP2: req.upstreamH2, keepsReplay: req.routeState?.keepsReplay ?? false),
            now: startNanos)

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

    /// An HTTP/1 head as the upstream gets it: hop-by-hop headers go (framing is re-added by the
    /// encoder), the client's fields in order except `dropped`, then `added`; HTTP/1.1, and the
    /// absolute-form target's path as its target (`uri`).
    private func rewrite(
        _ head: HTTPRequestHead, scan: HeaderScan, uri: Substring?, dropped: [String], added: [(String, String)]
    ) -> HTTPRequestHead {
        var outHead = head
        if let uri { outHead.uri = String(uri) }
        // (Set only when it differs: the head's method, target and version share one copy-on-write
        // box with `head`'s, and a write copies it — an allocation per request.)
        if outHead.version != .http1_1 { outHead.version = .http1_1 }
        outHead.headers.meshStripHopByHop(scan, removeExpect: scan.expectContinue)
        if !added.isEmpty || !dropped.isEmpty {
            var fields: [(String, String)] = []
            fields.reserveCapacity(outHead.headers.count + added.count)
            if dropped.isEmpty {
                for (name, value) in outHead.headers { fields.append((name, value)) }
            } else {
                for (name, value) in outHead.headers
                where !dropped.contains(where: { HeaderPolicy.equalsIgnoringASCIICase(name, $0) }) {
                    fields.append((name, value))
                }
            }
            fields.append(contentsOf: added)
            outHead.headers = HTTPHeaders(fields)
        }
        if req.upstreamH2 { outHead.headers.meshTrimValueWhitespace() }
        return outHead
    }
}

/// A request head as the proxy handler reads it: NIO's HTTP/1 head, or an HTTP/2 stream's checked
/// HEADERS block (`H2Request`) — read as it came, not translated.
enum IncomingHead: HeaderLookup {
    case http1(HTTPRequestHead)
    case h2(H2Request)

    var method: HTTPMethod {
        switch self {
        case .http1(let head): return head.method
        case .h2(let request): return request.method
        }
    }

    var uri: String {
        switch self {
        case .http1(let head): return head.uri
        case .h2(let request): return request.uri
        }
    }

    var isKeepAlive: Bool {
        switch self {
        case .http1(let head): return head.isKeepAlive
        case .h2: return true
        }
    }

    /// `:authority` (an HTTP/1 request's authority is its Host field, in the scan).
    var authority: String? {
        switch self {
        case .http1: return nil
        case .h2(let request): return request.authority
        }
    }

    func first(name: String) -> String? {
        switch self {
        case .http1(let head): return head.headers.first(name: name)
        case .h2(let request): return request.block.first(name: name)
        }
    }

    subscript(name: String) -> [String] {
        switch self {
        case .http1(let head): return head.headers[name]
        case .h2(let request): return request.block[name]
        }
    }

    func meshScan() -> HeaderScan {
        switch self {
        case .http1(let head): return head.headers.meshScan()
        case .h2(let request): return request.block.meshScan()
        }
    }
}

/// A request head as the upstream gets it: HTTP/1 types for an HTTP/1.1 upstream (and for an HTTP/1.1
/// client's request to an HTTP/2 upstream, which `HTTP2UpstreamConnection` translates), or, from an
/// HTTP/2 client to an HTTP/2 upstream, the HEADERS block itself.
enum UpstreamRequestHead {
    case http1(HTTPRequestHead)
    case h2(HPACKHeaders)

    static let placeholder = UpstreamRequestHead.http1(HTTPRequestHead(version: .http1_1, method: .GET, uri: "/"))

    /// The `x-meshd-dst` a request to `endpoint` carries: its address behind a node proxy, else none
    /// (a retry or hedge may go to another endpoint than the first attempt's).
    mutating func nameDestination(of endpoint: LoopEndpoint) {
        switch self {
        case .http1(var head):
            if endpoint.namesDestination {
                head.headers.replaceOrAdd(name: HeaderPolicy.destinationHeader, value: endpoint.destinationHeader)
            } else {
                head.headers.remove(name: HeaderPolicy.destinationHeader)
            }
            self = .http1(head)
        case .h2(var block):
            if endpoint.namesDestination {
                block.replaceOrAdd(name: HeaderPolicy.destinationHeader, value: endpoint.destinationHeader)
            } else {
                block.remove(name: HeaderPolicy.destinationHeader)
            }
            self = .h2(block)
        }
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
