/// The decisions of one request/response exchange through meshd: attempts, retries and their
/// eligibility, budgets, backoff, per-try and total timeouts, hedging, held gRPC responses, the idle
/// timeout and cancellation. meshd's handler feeds it events and carries out the action each returns;
/// it never reads a clock (every event carries `now`, uptime nanoseconds) and never touches a socket,
/// so every path runs in tests on simulated time with a seeded generator.
///
/// The shape follows SwiftNIO's `…StateMachine` types: mutating methods, one per event, returning an
/// action enum. Shared state it consults (the route's retry budget, the service's `maxRetries`) comes in
/// through a `RetryAdmission` the caller passes with the event.
public struct ExchangeStateMachine: Sendable {
    /// What the request's route and listener decide for the whole exchange.
    public struct Plan: Sendable, Equatable {
        /// The route's retry policy; nil: one attempt, no retry, no hedge (the inbound listener).
        public var retry: RetryPolicy?
        /// RFC 9110 §9.2.2: the method may be repeated after it reached an endpoint.
        public var idempotent: Bool
        /// The exchange's total deadline (uptime nanoseconds): the route's timeout, or the gRPC call's
        /// `grpc-timeout`.
        public var deadline: Int64
        /// `grpc-timeout` set the deadline: it covers the whole call, not just the response head.
        public var callDeadline: Bool
        /// No byte either way for this long ends the exchange (nanoseconds).
        public var idleTimeout: Int64
        /// Upstream is a stream of a multiplexed HTTP/2 connection.
        public var upstreamHTTP2: Bool
        /// Request parts are kept for a replay (`RetryPolicy.needsReplay`, computed once per route; and
        /// always for an HTTP/2 upstream, whose stream may be refused: see `upstreamRefused`).
        public var keepsReplay: Bool
        /// The most request body bytes kept for a replay: `retry.bufferBytes`, or without a retry
        /// policy `RetryPolicy`'s default (64 KiB) for an HTTP/2 upstream.
        public var replayLimit: Int

        public init(
            retry: RetryPolicy?, idempotent: Bool, deadline: Int64, callDeadline: Bool = false, idleTimeout: Int64,
            upstreamHTTP2: Bool = false, keepsReplay: Bool? = nil
        ) {
            self.retry = retry
            self.keepsReplay = (keepsReplay ?? (retry?.needsReplay ?? false)) || upstreamHTTP2
            self.replayLimit = retry?.bufferBytes ?? (upstreamHTTP2 ? RetryPolicy().bufferBytes : 0)
            self.idempotent = idempotent
            self.deadline = deadline
            self.callDeadline = callDeadline
            self.idleTimeout = idleTimeout
            self.upstreamHTTP2 = upstreamHTTP2
        }
    }

    public enum Phase: Sendable, Equatable {
        /// Waiting for an upstream connection (or stream) for the current attempt.
        case connecting
        /// The request head went upstream; no response head yet.
        case waiting
        /// Waiting out a retry backoff until `until`.
        case backoff(until: Int64)
        /// A gRPC response head (and `bytes` of body) held until its trailers say whether to retry.
        case holding(bytes: Int)
        /// The response head went to the client: no retry any more.
        case streaming
        /// Complete, answered by meshd, or abandoned by the client: later events change nothing.
        case done
    }

    public enum Hedge: Sendable, Equatable {
        /// Not considered yet (a hedge may start once the hedge delay passed).
        case available
        /// The hedge delay passed and the request qualifies: the caller looks for another endpoint.
        case considering
        /// A hedged attempt is connecting.
        case connecting
        /// A hedged attempt is sent and racing the first one.
        case running
        /// Considered, lost, dropped or promoted: never again for this request.
        case spent
    }

    /// Why a retry whose condition matched was not sent (`meshd_retries_skipped_total{cause}`).
    public enum Skip: String, Sendable, CaseIterable {
        case attempts
        case nonIdempotent = "non-idempotent"
        case bodyTooLarge = "body-too-large"
        case deadline
        case limit
        case budget
    }

    /// A retry to send after `delay` nanoseconds.
    public struct Retry: Sendable, Equatable {
        /// The matched condition, as `meshd_retries_total` labels it (`status`, `grpc` or the name).
        public var reason: String
        public var delay: Int64
        /// This is the request's first retry: it now holds one of the service's `maxRetries` slots.
        public var takesRetrySlot: Bool
        /// The request reached the endpoint: what was sent is replayed from the replay buffer.
        public var replay: Bool

        public init(reason: String, delay: Int64, takesRetrySlot: Bool, replay: Bool) {
            self.reason = reason
            self.delay = delay
            self.takesRetrySlot = takesRetrySlot
            self.replay = replay
        }

        /// The `meshd_retries_total{reason}` label: a status code counts as `status`, a gRPC status as
        /// `grpc`, anything else by its own name.
        public var metricLabel: String {
            Int(reason) != nil ? "status" : (GRPCStatus(name: reason) != nil ? "grpc" : reason)
        }
    }

    /// What to do with the current attempt after an event.
    public enum AttemptAction: Sendable, Equatable {
        case none
        /// Send the request again at once on another connection, outside the retry policy: a pooled
        /// connection the peer had closed, or a multiplexed connection that went away as the stream
        /// opened (nothing reached the application).
        case reopen
        /// Drop this attempt (not forwarded) and retry after the backoff.
        case retry(Retry)
        /// The hedged attempt becomes the request's attempt.
        case promoteHedge
        /// Reply with an error; `skipped` when a retry condition matched but a retry was refused.
        case fail(skipped: Skip?)
        /// The response broke after its head went to the client: the client must see a broken
        /// response (gRPC: a status in the trailers), never a silently truncated one.
        case breakResponse
    }

    /// What to do with a response head from the current attempt.
    public enum HeadAction: Sendable, Equatable {
        /// Send it to the client (`skipped` when it matched a retry condition but was not retried).
        case forward(skipped: Skip?)
        /// Hold it (a gRPC 200 whose status comes in the trailers).
        case hold
        case promoteHedge
        case retry(Retry)
    }

    public enum HeldEndAction: Sendable, Equatable {
        /// Send the held response on.
        case release(skipped: Skip?)
        /// Its trailers asked for a retry: the held response is dropped.
        case retry(Retry)
    }

    public enum TimerAction: Sendable, Equatable {
        case none
        /// The total deadline passed with no response head: `504 upstream-timeout`, no more attempts.
        case timeout
        /// The per-try timeout fired: the attempt failed with this action.
        case attempt(AttemptAction)
        /// A gRPC call's own deadline passed while its response streamed: DEADLINE_EXCEEDED.
        case callDeadline
        /// Start a hedged attempt to another endpoint (then `hedgeStarting`).
        case hedge
        /// No byte either way for the idle timeout.
        case idle(responseStarted: Bool)
    }

    /// The precise timers an attempt needs (absolute uptime nanoseconds), besides the loop's tick.
    public struct AttemptTimers: Sendable, Equatable {
        public var perTry: Int64?
        public var hedge: Int64?
    }

    public let plan: Plan
    public private(set) var phase: Phase = .connecting
    public private(set) var hedge: Hedge = .available
    /// Attempts started (the first included).
    public private(set) var attempts = 0
    public private(set) var retries = 0
    public private(set) var requestEnded = false
    /// A response head reached the client (forwarded or meshd's own).
    public private(set) var responseStarted = false
    public private(set) var responseEnded = false
    /// The client went away before the response's end reached it (`clientLeft`).
    public private(set) var clientCancelled = false
    /// The request is still kept for replay (`retry.bufferBytes` not exceeded).
    public private(set) var replayable: Bool
    public private(set) var replayBytes = 0
    /// The current attempt's head went upstream (so the application may have seen it).
    public private(set) var sentToUpstream = false
    /// Request body bytes went upstream on the current attempt.
    public private(set) var bodyForwarded = false
    /// The current attempt runs on a connection or multiplexed connection that was already open.
    public private(set) var reusedConnection = false
    /// `reopen` was used (once per request).
    public private(set) var reopened = false
    /// Times the request was sent again because its HTTP/2 stream was refused.
    public private(set) var refusedResends = 0
    /// At most this many resends of refused streams per request: a peer refusing every stream must not
    /// hold a request in a loop.
    public static let maxRefusedResends = 3
    /// The request holds one of the service's `maxRetries` slots.
    public private(set) var holdsRetrySlot = false
    public private(set) var lastActivity: Int64
    public private(set) var attemptStarted: Int64
    public private(set) var tryDeadline = Int64.max

    public init(plan: Plan, now: Int64) {
        self.plan = plan
        self.replayable = plan.keepsReplay
        self.lastActivity = now
        self.attemptStarted = now
    }

    // MARK: - Request side

    /// An attempt starts (the first, or one after a backoff): returns the timers to arm.
    public mutating func attemptStarted(now: Int64) -> AttemptTimers {
        guard phase != .done else { return AttemptTimers() }
        attempts += 1
        phase = .connecting
        sentToUpstream = false
        bodyForwarded = false
        lastActivity = now
        attemptStarted = now
        var timers = AttemptTimers()
        if let perTry = plan.retry?.perTryTimeout {
            tryDeadline = now &+ perTry.nanoseconds
            timers.perTry = tryDeadline
        } else {
            tryDeadline = .max
        }
        if let after = plan.retry?.hedgeAfter, hedge == .available {
            timers.hedge = now &+ after.nanoseconds
        }
        return timers
    }

    /// The attempt has its connection; the request head goes upstream now.
    public mutating func attached(reused: Bool, now: Int64) {
        guard phase == .connecting else { return }
        reusedConnection = reused
        sentToUpstream = true
        phase = .waiting
        lastActivity = now
    }

    /// Request parts read now are kept for a replay.
    public var keepsParts: Bool { replayable && phase != .done }

    /// A request body part of `bytes` was read. Returns whether to keep it for a replay.
    public mutating func requestBody(bytes: Int, now: Int64) -> Bool {
        lastActivity = now
        guard keepsParts else { return false }
        replayBytes += bytes
        if replayBytes > plan.replayLimit {
            // Too large to keep: this request will not be retried once it reached an endpoint.
            replayable = false
            return false
        }
        return true
    }

    /// The request's end was read. Returns true when the exchange is now complete.
    public mutating func requestEnd(now: Int64) -> Bool {
        requestEnded = true
        lastActivity = now
        return responseEnded
    }

    /// Request body bytes went upstream on the current attempt.
    public mutating func bodySent(now: Int64) {
        bodyForwarded = true
        lastActivity = now
    }

    // MARK: - Attempt outcomes

    /// Connecting failed. `reused`: the stream was opened on an existing multiplexed connection.
    public mutating func connectFailed(
        reused: Bool, now: Int64, admission: inout some RetryAdmission, rng: inout SplitMix64
    ) -> AttemptAction {
        guard phase == .connecting else { return .none }
        if plan.upstreamHTTP2 && reused && !reopened {
            reopened = true
            return .reopen
        }
        return attemptFailed(.connectFailure, now: now, admission: &admission, rng: &rng)
    }

    /// The upstream connection of the current attempt closed.
    public mutating func upstreamClosed(
        now: Int64, admission: inout some RetryAdmission, rng: inout SplitMix64
    ) -> AttemptAction {
        switch phase {
        case .done, .backoff, .connecting:
            return .none
        case .streaming:
            if responseEnded { return .none }
            phase = .done
            return .breakResponse
        case .waiting, .holding:
            if phase == .waiting && hedge == .running {
                return promote()
            }
            if reusedConnection && !reopened && !bodyForwarded && plan.idempotent {
                // A kept-alive connection the peer closed just as it was reused: safe to send an
                // idempotent request whose body had not started again, once, on a new connection.
                reopened = true
                phase = .connecting
                return .reopen
            }
            return attemptFailed(.reset, now: now, admission: &admission, rng: &rng)
        }
    }

    /// The current attempt's HTTP/2 stream was refused: RST_STREAM(REFUSED_STREAM), or above the
    /// last stream id of the endpoint's GOAWAY. The application never saw the request (RFC 9113 §8.7,
    /// §6.8), so it is sent again at once on another stream, whatever its method — as gRPC clients
    /// retry refused streams transparently, and a proxy answering UNAVAILABLE instead would take that
    /// from them. Up to `maxRefusedResends` times per request, and only when the request can be sent
    /// whole again (its body not started, or kept within `plan.replayLimit`); otherwise the retry
    /// policy decides (`refused-stream`). A resend does not count against the endpoint.
    public mutating func upstreamRefused(
        now: Int64, admission: inout some RetryAdmission, rng: inout SplitMix64
    ) -> AttemptAction {
        guard phase == .waiting else { return upstreamClosed(now: now, admission: &admission, rng: &rng) }
        if hedge == .running { return promote() }
        if refusedResends < Self.maxRefusedResends && (!bodyForwarded || replayable) {
            refusedResends += 1
            phase = .connecting
            return .reopen
        }
        return attemptFailed(.refusedStream, now: now, admission: &admission, rng: &rng)
    }

    /// The current attempt ended without a usable response head (`outcome`): the hedge takes over,
    /// or a retry if the policy, the budget and the limits allow, or an error reply.
    public mutating func attemptFailed(
        _ outcome: AttemptOutcome, now: Int64, admission: inout some RetryAdmission, rng: inout SplitMix64
    ) -> AttemptAction {
        guard phase != .done, phase != .streaming else { return .none }
        if hedge == .running && phase == .waiting {
            return promote()
        }
        if hedge != .available { hedge = .spent }
        switch decideRetry(outcome, now: now, admission: &admission, rng: &rng) {
        case .retry(let r): return .retry(r)
        case .no(let skip):
            phase = .done
            return .fail(skipped: skip)
        }
    }

    /// A response head from the current attempt.
    public mutating func responseHead(
        status: Int, grpcStatus: Int?, grpcContentType: Bool, now: Int64,
        admission: inout some RetryAdmission, rng: inout SplitMix64
    ) -> HeadAction {
        guard phase == .waiting else { return .forward(skipped: nil) }
        lastActivity = now
        var skipped: Skip?
        if let policy = plan.retry {
            if status == 200, grpcStatus == nil, grpcContentType, policy.needsTrailers, attempts < policy.attempts {
                // gRPC puts its status in the trailers: hold this response until they arrive.
                hedge = .spent
                phase = .holding(bytes: 0)
                return .hold
            }
            let outcome = AttemptOutcome.response(status: status, grpcStatus: grpcStatus)
            if status >= 400 || grpcStatus != nil, policy.retryReason(for: outcome) != nil {
                if hedge == .running {
                    // The hedged attempt is still running: it becomes the request's attempt.
                    _ = promote()
                    return .promoteHedge
                }
                hedge = .spent
                switch decideRetry(outcome, now: now, admission: &admission, rng: &rng) {
                case .retry(let r): return .retry(r)
                case .no(let skip): skipped = skip
                }
            }
        }
        hedge = .spent
        phase = .streaming
        responseStarted = true
        return .forward(skipped: skipped)
    }

    /// Body bytes of a held response. Returns true when the response must go on now: a gRPC
    /// response is held only until its first message (or its trailers), never longer — a streaming
    /// call whose client waits for a message before sending the next one would otherwise stall until
    /// its deadline. So a call is retried on its status only when it ends before sending a message
    /// (as Envoy retries on the gRPC status of a trailers-only response); after a message, never.
    public mutating func heldBody(bytes: Int, now: Int64) -> Bool {
        guard case .holding(let held) = phase else { return false }
        lastActivity = now
        if bytes > 0 {
            phase = .streaming
            responseStarted = true
            return true
        }
        phase = .holding(bytes: held)
        return false
    }

    /// The trailers of a held response (`grpcStatus` from `grpc-status`).
    public mutating func heldEnd(
        grpcStatus: Int?, now: Int64, admission: inout some RetryAdmission, rng: inout SplitMix64
    ) -> HeldEndAction {
        guard case .holding = phase else { return .release(skipped: nil) }
        lastActivity = now
        var skipped: Skip?
        if requestEnded {
            switch decideRetry(.response(status: 200, grpcStatus: grpcStatus), now: now, admission: &admission, rng: &rng) {
            case .retry(let r): return .retry(r)
            case .no(let skip): skipped = skip
            }
        }
        phase = .streaming
        responseStarted = true
        return .release(skipped: skipped)
    }

    /// The response's end reached the client. Returns true when the exchange is complete (the
    /// request had ended too); false for an early response (the rest of the request is dropped).
    public mutating func responseEnd(now: Int64) -> Bool {
        responseEnded = true
        responseStarted = true
        lastActivity = now
        phase = .done
        return requestEnded
    }

    /// Response bytes went to the client.
    public mutating func responseBody(now: Int64) {
        lastActivity = now
    }

    /// The backoff is over: the caller picks an endpoint and starts the next attempt.
    public mutating func backoffElapsed() -> Bool {
        guard case .backoff = phase else { return false }
        phase = .connecting
        return true
    }

    /// meshd replied itself (a local error): nothing more is decided.
    public mutating func replied() {
        phase = .done
        responseStarted = true
        responseEnded = true
    }

    /// The client went away (a reset stream, a closed connection): as `cancel()`, and a call it cut
    /// off before the response's end counts as cancelled by its client (`grpcStatus`), even after
    /// the response head reached it. Returns whether a response head had reached it.
    @discardableResult
    public mutating func clientLeft() -> Bool {
        if !responseEnded { clientCancelled = true }
        return cancel()
    }

    /// The client went away (or the request broke): nothing more is decided. Returns whether a
    /// response head had reached it.
    @discardableResult
    public mutating func cancel() -> Bool {
        phase = .done
        if hedge != .spent { hedge = .spent }
        return responseStarted
    }

    // MARK: - Hedging

    /// The caller found another endpoint for the hedge: whether the budget lets it go.
    public mutating func hedgeStarting(now: Int64, admission: inout some RetryAdmission) -> Bool {
        guard phase == .waiting, hedge == .considering else { return false }
        guard admission.takeRetry(now: now) else {
            hedge = .spent
            return false
        }
        hedge = .connecting
        return true
    }

    /// The hedged attempt is connected and sent.
    public mutating func hedgeSent() {
        guard hedge == .connecting, phase == .waiting else {
            return
        }
        hedge = .running
    }

    /// The hedged attempt failed to connect, broke, or was dropped.
    public mutating func hedgeEnded() {
        if hedge != .available { hedge = .spent }
    }

    /// A response head from the hedged attempt: true when it wins (it becomes the request's attempt),
    /// false when it is not a good answer (dropped; the first attempt may still bring one).
    public mutating func hedgeHead(status: Int, grpcStatus: Int?) -> Bool {
        guard hedge == .running, phase == .waiting else { return false }
        let outcome = AttemptOutcome.response(status: status, grpcStatus: grpcStatus)
        if status >= 400 || grpcStatus != nil, plan.retry?.retryReason(for: outcome) != nil {
            hedge = .spent
            return false
        }
        _ = promote()
        return true
    }

    private mutating func promote() -> AttemptAction {
        hedge = .spent
        phase = .waiting
        sentToUpstream = true
        return .promoteHedge
    }

    // MARK: - Timers

    /// A timer fired, or the loop's periodic check ran, at `now`.
    public mutating func timerFired(
        now: Int64, admission: inout some RetryAdmission, rng: inout SplitMix64
    ) -> TimerAction {
        switch phase {
        case .done:
            return .none
        case .connecting, .waiting, .backoff:
            if now > plan.deadline {
                // The route's total timeout, retries included: no more attempts.
                phase = .done
                if hedge != .spent { hedge = .spent }
                return .timeout
            }
            if (phase == .connecting || phase == .waiting) && now > tryDeadline {
                tryDeadline = .max
                return .attempt(attemptFailed(.timeout, now: now, admission: &admission, rng: &rng))
            }
            if phase == .waiting, hedge == .available, let policy = plan.retry, let after = policy.hedgeAfter,
                now > attemptStarted &+ after.nanoseconds
            {
                // Once per request, for complete requests kept for replay that may be repeated.
                if requestEnded, replayable, attempts < policy.attempts, plan.idempotent || policy.retryNonIdempotent {
                    hedge = .considering
                    return .hedge
                }
                hedge = .spent
                return .none
            }
            if phase == .waiting && now &- lastActivity > plan.idleTimeout {
                phase = .done
                return .idle(responseStarted: false)
            }
            return .none
        case .holding, .streaming:
            if plan.callDeadline && phase == .streaming && now > plan.deadline {
                phase = .done
                return .callDeadline
            }
            if now &- lastActivity > plan.idleTimeout {
                let started = phase == .streaming
                phase = .done
                return .idle(responseStarted: started)
            }
            return .none
        }
    }

    // MARK: - Reporting

    /// The call's gRPC status for metrics and logs: the status the response carried, else one that
    /// follows from how the exchange ended (a client that gave up, before the response or during it:
    /// DEADLINE_EXCEEDED once its own deadline passed, else CANCELLED; meshd's error's status;
    /// UNKNOWN otherwise).
    public func grpcStatus(recorded: Int?, httpStatus: Int, error: MeshError?, now: Int64) -> Int {
        if let recorded { return recorded }
        if httpStatus == 499 || clientCancelled { return plan.callDeadline && now >= plan.deadline ? 4 : 1 }
        return error?.grpcStatus ?? 2
    }

    // MARK: - The retry decision

    enum Decision {
        case retry(Retry)
        case no(Skip?)
    }

    private mutating func decideRetry(
        _ outcome: AttemptOutcome, now: Int64, admission: inout some RetryAdmission, rng: inout SplitMix64
    ) -> Decision {
        guard let policy = plan.retry, let reason = policy.retryReason(for: outcome) else { return .no(nil) }
        guard attempts < policy.attempts else { return .no(.attempts) }
        // Nothing reached the endpoint when the head was never sent (connect failure, or a per-try
        // timeout while connecting): any method may go again, with the parts still pending.
        if sentToUpstream {
            guard plan.idempotent || policy.retryNonIdempotent else { return .no(.nonIdempotent) }
            guard replayable else { return .no(.bodyTooLarge) }
        }
        guard now &+ 1_000_000 < plan.deadline else { return .no(.deadline) }
        if !holdsRetrySlot && !admission.retryFits() { return .no(.limit) }
        guard admission.takeRetry(now: now) else { return .no(.budget) }
        retries += 1
        let first = !holdsRetrySlot
        holdsRetrySlot = true
        let delay = policy.backoff.delay(retry: retries, using: &rng).nanoseconds
        let replay = sentToUpstream
        phase = .backoff(until: now &+ delay)
        return .retry(Retry(reason: reason, delay: delay, takesRetrySlot: first, replay: replay))
    }
}

/// The shared state a retry decision consults: the service's circuit breaker and the route's budget.
public protocol RetryAdmission {
    /// The service has room for one more request in retry (`limits.maxRetries`).
    func retryFits() -> Bool
    /// Takes one retry from the route's budget; false when it is spent.
    mutating func takeRetry(now: Int64) -> Bool
}
