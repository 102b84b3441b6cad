import MeshCore
import NIOCore
import NIOHTTP1

/// The route's retry budget and the service's `maxRetries`, as the exchange state machine consults
/// them (shared across loops: see `SharedRouteState`).
struct LoopRetryAdmission: RetryAdmission {
    let route: RouteState?
    let service: LoopService?

    func retryFits() -> Bool {
        service?.admits(.retries) ?? false
    }

    mutating func takeRetry(now: Int64) -> Bool { route?.tryRetry(now: now) ?? false }
}

// Attempts: connecting, carrying out the exchange state machine's actions (retry after a backoff,
// reopen, promote the hedge, fail), and hedging.
extension HTTPProxyHandler {
    var retryAdmission: LoopRetryAdmission { LoopRetryAdmission(route: req.routeState, service: req.service) }

    /// The connection's read cycle ended (see `startRequest`): the stream is still open.
    func startDeferredAttempt() {
        guard attemptDeferred, let context, case .connecting = state else { return }
        attemptDeferred = false
        beginAttempt(context: context)
    }

    /// One attempt: the endpoint in `req.endpoint` gets the request (again, on a retry).
    func beginAttempt(context: ChannelHandlerContext) {
        req.responseHeadNanos = nil
        req.status = 0
        let timers = req.exchange.attemptStarted(now: Self.nowNanos)
        cancelAttemptTimers()
        if let at = timers.perTry { scheduleCheck(at: at, context: context) }
        if let at = timers.hedge { scheduleCheck(at: at, context: context) }
        req.endpoint?.started()
        dispatch(context: context)
    }

    private func scheduleCheck(at: Int64, context: ChannelHandlerContext) {
        let serial = self.serial
        let delay = at - Self.nowNanos + 1_000_000
        attemptTimers.append(
            context.eventLoop.assumeIsolated().scheduleTask(in: .nanoseconds(delay)) { [self] in
                if self.serial == serial { self.checkTimeouts(now: .now()) }
            })
    }

    func cancelAttemptTimers() {
        guard !attemptTimers.isEmpty else { return }
        for t in attemptTimers { t.cancel() }
        attemptTimers.removeAll()
    }

    /// Sends the request head to a pooled connection or opens a new one.
    func dispatch(context: ChannelHandlerContext) {
        guard let target = req.target else { return }
        releasePending()
        let pool = req.pool ?? loop.pool
        if let conn = req.upstreamH2 ? pool.leaseHTTP2Stream(target) : pool.lease(target) {
            // An idle HTTP/1.1 connection, or a free stream on a ready HTTP/2 one: nothing to wait for
            // (and so nothing pending for the circuit breaker).
            attach(conn, reused: true, context: context)
            return
        }
        var counters: ServiceCounters?
        var connectTimeout = loop.snapshot.config.upstream.connectTimeout
        if direction == .outbound, let service = req.service {
            // Circuit breaker: a new connection must fit the service's connection and pending limits
            // (a stream on an HTTP/2 connection that has room needs no new connection).
            let needsConnection = !req.upstreamH2 || !pool.hasHTTP2Capacity(target)
            if needsConnection && refuseOverflow(.connections, of: service, context: context) { return }
            if refuseOverflow(.pending, of: service, context: context) { return }
            service.counters.pending.wrappingIncrement(ordering: .relaxed)
            req.countedPending = true
            counters = service.counters
            connectTimeout = service.connectTimeout
        }
        state = .connecting
        let attempt = req.exchange.attempts
        let serial = self.serial
        let (future, reused) = connectUpstream(target, pool: pool, timeout: connectTimeout, counters: counters)
        future.assumeIsolated().whenComplete { [self] result in
            // (a request that ended while connecting gave its pending slot back in finishRequest)
            let current = self.serial == serial && self.req.exchange.attempts == attempt
            if current { self.releasePending() }
            guard current, case .connecting = self.state, let context = self.context else {
                // The request is gone: a fresh HTTP/1.1 connection serves the next one from the pool.
                if case .success(let conn) = result {
                    if conn.isStream { conn.close() } else { Self.release(conn) }
                }
                return
            }
            switch result {
            case .success(let conn):
                self.attach(conn, reused: reused, context: context)
            case .failure(let error):
                self.connectFailed(target: target, reused: reused, error: error, context: context)
            }
        }
    }

    private func connectFailed(target: SocketAddress, reused: Bool, error: Error, context: ChannelHandlerContext) {
        var admission = retryAdmission
        let action = req.exchange.connectFailed(reused: reused, now: Self.nowNanos, admission: &admission, rng: &loop.rng)
        if case .reopen = action {
            // The multiplexed connection closed (GOAWAY, reset) as this stream was opened on it.
            loop.shared.metrics.upstreamStaleRetries.increment()
            loop.shared.logger.debug("HTTP/2 stream not opened, trying another connection", metadata: ["error": "\(error)"])
            dispatch(context: context)
            return
        }
        if let left = loop.shared.upstreamErrorLog.admit() {
            loop.shared.logger.info(
                "upstream connect failed",
                metadata: ["target": "\(target)", "error": "\(error)", "direction": "\(direction.label)", "suppressed": "\(left)"])
        }
        recordAttempt(.connectFailure)
        carryOut(action, error: .connectFailed, detail: "cannot connect to \(target): \(error)", context: context)
    }

    /// A new HTTP/1.1 connection, or a stream of a (new or existing) multiplexed HTTP/2 connection.
    func connectUpstream(
        _ target: SocketAddress, pool: UpstreamPool, timeout: MeshDuration, counters: ServiceCounters?
    ) -> (EventLoopFuture<UpstreamConnection>, reused: Bool) {
        let config = loop.snapshot.config
        if req.upstreamH2 {
            let (future, reused) = pool.openHTTP2Stream(
                target, settings: config.http2, maxHeaderBytes: config.http.maxHeaderBytes, timeout: timeout, counters: counters)
            return (future, reused)
        }
        return (
            pool.connect(target, maxHeaderBytes: config.http.maxHeaderBytes, timeout: timeout, counters: counters), false
        )
    }

    /// The outlier detector learns how the current attempt ended.
    func recordAttempt(_ outcome: AttemptOutcome) {
        if let endpoint = req.endpoint { req.service?.record(endpoint, outcome, now: Self.nowNanos) }
    }

    /// Carries out what the exchange decided after an attempt failed.
    func carryOut(
        _ action: ExchangeStateMachine.AttemptAction, error: MeshError, detail: String, context: ChannelHandlerContext
    ) {
        switch action {
        case .none, .breakResponse:
            return
        case .reopen:
            state = .connecting
            dispatch(context: context)
        case .promoteHedge:
            // A hedged attempt is still running: it takes over.
            promoteHedge()
        case .retry(let retry):
            dropHedge()
            if case .proxying(let upstream) = state {
                upstream.owner = nil
                upstream.close()
            }
            scheduleRetry(retry, context: context)
        case .fail(let skipped):
            countSkipped(skipped)
            dropHedge()
            if case .proxying(let upstream) = state {
                upstream.owner = nil
                upstream.close()
            }
            loop.shared.logger.info(
                "upstream attempt failed",
                metadata: ["direction": "\(direction.label)", "error": "\(error.rawValue)", "detail": "\(detail)"])
            reply(error, context: context, detail: detail)
        }
    }

    /// Circuit breaker: replies `503 overflow-…` and returns true when `service` is at its `kind` limit.
    func refuseOverflow(
        _ kind: CircuitBreakerLimits.Overflow, of service: LoopService, context: ChannelHandlerContext
    ) -> Bool {
        guard !service.admits(kind), let error = kind.error else { return false }
        reply(error, context: context, detail: "service '\(service.name)' is at \(kind.key)")
        return true
    }

    func countSkipped(_ skip: ExchangeStateMachine.Skip?) {
        if let skip { req.service?.metrics.retriesSkipped[skip.rawValue]?.increment() }
    }

    /// Waits the backoff the exchange chose, then sends the request to another endpoint.
    func scheduleRetry(_ retry: ExchangeStateMachine.Retry, context: ChannelHandlerContext) {
        guard let service = req.service else { return }
        service.metrics.retries[retry.metricLabel]?.increment()
        if retry.takesRetrySlot { service.counters.activeRetries.wrappingIncrement(ordering: .relaxed) }
        if let endpoint = req.endpoint {
            // No response head: the attempt failed (connect failure, reset, timeout) and counts as slow.
            let latency = req.responseHeadNanos.map { $0 - Int64(req.started.uptimeNanoseconds) }
            endpoint.finished(latencyNanos: latency, failed: latency == nil, now: Self.nowNanos)
            req.triedEndpoints.append(ObjectIdentifier(endpoint))
            req.endpoint = nil
        }
        // Parts already sent are replayed from the buffer; unsent ones are still pending.
        if retry.replay { pending = replayParts() }
        let task = context.eventLoop.assumeIsolated().scheduleTask(in: .nanoseconds(retry.delay)) { [self] in
            self.retryNow()
        }
        state = .backoff(task)
    }

    private func retryNow() {
        guard case .backoff = state, let context, let service = req.service, req.exchange.backoffElapsed() else { return }
        let now = Self.nowNanos
        // Prefer an endpoint no attempt of this request went to (as Envoy's `previous_hosts`
        // predicate): with two endpoints down, retries must not alternate between them.
        if let hash = req.hash { req.hash = StableHash.mix(hash &+ UInt64(req.exchange.retries)) }
        let tried = req.triedEndpoints
        let endpoints = service.endpoints
        let choice = service.balancer.pick(hash: req.hash, now: now, using: &loop.rng) { i in
            tried.contains(ObjectIdentifier(endpoints[i]))
        }
        guard let index = choice else {
            reply(.noEndpoints, context: context, detail: "service '\(service.name)' has no endpoints")
            return
        }
        let endpoint = service.endpoints[index]
        guard case .pool(let pool) = loop.upstreamPool(service: service, endpoint: endpoint, source: clientAddress) else {
            reply(.forbidden, context: context, detail: "source pod \(clientIP) runs as no identity; service '\(service.name)' needs mTLS")
            return
        }
        req.endpoint = endpoint
        req.target = endpoint.address
        req.pool = pool
        req.head.nameDestination(of: endpoint)
        state = .connecting
        beginAttempt(context: context)
    }

    /// The attempt is connected, failed, or the request ended: its `maxPending` slot is free again.
    func releasePending() {
        guard req.countedPending else { return }
        req.countedPending = false
        req.service?.counters.pending.wrappingDecrement(ordering: .relaxed)
    }

    // MARK: - Timers

    /// A timer or the loop's tick: what the exchange decides at `now`.
    func exchangeTimer(now: Int64, context: ChannelHandlerContext) {
        var admission = retryAdmission
        let action = req.exchange.timerFired(now: now, admission: &admission, rng: &loop.rng)
        // Formatted only for a message: the loop's tick asks every exchange in flight, and most have
        // nothing due.
        var target: String { req.target?.description ?? "upstream" }
        switch action {
        case .none:
            return
        case .timeout:
            loop.shared.logger.info("upstream timeout", metadata: ["target": "\(target)", "authority": "\(req.authority)"])
            reply(.upstreamTimeout, context: context, detail: "no response from \(target) in time")
        case .attempt(let attempt):
            if attempt != .none { recordAttempt(.timeout) }
            carryOut(attempt, error: .upstreamTimeout, detail: "no response from \(target) within the per-try timeout", context: context)
        case .callDeadline:
            // The call's grpc-timeout passed while its response streams: DEADLINE_EXCEEDED.
            loop.shared.metrics.error(.upstreamTimeout, direction).increment()
            if multiplexed {
                endGRPCCall(.upstreamTimeout, detail: "deadline (grpc-timeout) exceeded", context: context)
            } else {
                if case .proxying(let upstream) = state { upstream.close() }
                finishRequest(status: req.status, error: .upstreamTimeout)
                state = .closed
                closeDownstream(context)
            }
        case .hedge:
            startHedge(now: now)
        case .idle(let responseStarted):
            // No byte either way for the idle timeout: the exchange is stuck.
            let timeout = req.service?.idleTimeout ?? loop.snapshot.config.upstream.idleTimeout
            loop.shared.logger.info("upstream idle timeout", metadata: ["target": "\(target)", "timeout": "\(timeout)"])
            if responseStarted {
                if case .proxying(let upstream) = state {
                    upstream.owner = nil
                    upstream.close()
                }
                loop.shared.metrics.error(.idleTimeout, direction).increment()
                finishRequest(status: req.status, error: .idleTimeout)
                state = .closed
                closeDownstream(context)
            } else {
                reply(.idleTimeout, context: context, detail: "no byte from \(target) for \(timeout)")
            }
        }
    }

    // MARK: - Hedging

    /// The exchange asked for a hedge (`retry.hedgeAfter` without a response head): a second attempt
    /// goes to another endpoint, within the retry budget; the first good response head wins and the
    /// other attempt is closed.
    private func startHedge(now: Int64) {
        guard let service = req.service else { return }
        var choice: Int?
        for _ in 0..<4 {
            choice = service.balancer.pick(hash: nil, now: now, using: &loop.rng)
            if let c = choice, service.endpoints[c] !== req.endpoint { break }
            choice = nil
        }
        guard let index = choice,
            case .pool(let hedgePool) = loop.upstreamPool(service: service, endpoint: service.endpoints[index], source: clientAddress)
        else {
            req.exchange.hedgeEnded()  // no other endpoint: nothing to hedge to
            return
        }
        var admission = retryAdmission
        guard req.exchange.hedgeStarting(now: now, admission: &admission) else {
            service.metrics.retriesSkipped["budget"]?.increment()
            return
        }
        service.metrics.retries["hedge"]?.increment()
        let endpoint = service.endpoints[index]
        var head = req.head
        head.nameDestination(of: endpoint)
        endpoint.started()
        hedgeEndpoint = endpoint
        let send: (UpstreamConnection) -> Void = { [self] conn in
            conn.owner = self
            conn.pool = hedgePool
            conn.uses += 1
            self.hedge = conn
            self.req.exchange.hedgeSent()
            conn.writeHead(head)
            for part in self.replayParts() {
                switch part {
                case .body(let b): conn.write(.body(.byteBuffer(b)))
                case .end(let t): conn.write(.end(t))
                case .head: break
                }
            }
            conn.flush()
        }
        if !req.upstreamH2, let conn = hedgePool.lease(endpoint.address) {
            send(conn)
            return
        }
        let serial = self.serial
        connectUpstream(endpoint.address, pool: hedgePool, timeout: service.connectTimeout, counters: service.counters).0
            .assumeIsolated().whenComplete { [self] result in
                guard self.serial == serial, self.req.exchange.hedge == .connecting, self.hedgeEndpoint === endpoint else {
                    if case .success(let conn) = result { conn.close() }
                    return
                }
                switch result {
                case .success(let conn): send(conn)
                case .failure:
                    service.record(endpoint, .connectFailure, now: Self.nowNanos)
                    self.dropHedge()
                }
            }
    }

    func hedgeHead(_ head: ResponseHead, conn: UpstreamConnection, context: ChannelHandlerContext) {
        let status = head.status
        let grpcStatus = head.scan.grpcStatus.flatMap { Int($0) }
        guard req.exchange.hedgeHead(status: status, grpcStatus: grpcStatus) else {
            if let e = hedgeEndpoint { req.service?.record(e, .response(status: status, grpcStatus: grpcStatus), now: Self.nowNanos) }
            dropHedge()  // not a good answer: the first attempt may still bring one
            return
        }
        // The hedged attempt answered first: it becomes the request's attempt.
        promoteHedge()
        upstreamHead(head, from: conn)
    }

    /// Closes the first attempt and makes the hedged one the request's attempt.
    func promoteHedge() {
        guard let conn = hedge else { return }
        if case .proxying(let primary) = state {
            primary.owner = nil
            primary.close()
        }
        req.endpoint?.finished(latencyNanos: nil, now: Self.nowNanos)
        req.endpoint = hedgeEndpoint
        req.target = conn.address
        req.pool = conn.pool
        hedge = nil
        hedgeEndpoint = nil
        state = .proxying(conn)
    }

    func dropHedge() {
        req.exchange.hedgeEnded()
        guard hedgeEndpoint != nil || hedge != nil else { return }
        hedgeEndpoint?.finished(latencyNanos: nil, now: Self.nowNanos)
        hedgeEndpoint = nil
        if let conn = hedge {
            conn.owner = nil
            conn.close()
            hedge = nil
        }
    }
}
