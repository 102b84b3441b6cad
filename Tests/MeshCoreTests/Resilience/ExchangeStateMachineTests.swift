import Testing

@testable import MeshCore

/// The route's budget and the service's `maxRetries` as a test controls them.
struct TestAdmission: RetryAdmission {
    var budget: RetryBudget
    var slotsFree = true
    var taken = 0

    init(ratio: Double = 0.2, minPerSecond: Double = 10, now: Int64 = 0) {
        budget = RetryBudget(config: .init(ratio: ratio, minPerSecond: minPerSecond), now: now)
    }

    func retryFits() -> Bool { slotsFree }
    mutating func takeRetry(now: Int64) -> Bool {
        guard budget.tryRetry(now: now) else { return false }
        taken += 1
        return true
    }
}

/// Simulated time and a seeded generator around one exchange.
struct ExchangeHarness {
    var machine: ExchangeStateMachine
    var admission = TestAdmission()
    var rng = SplitMix64(seed: 42)
    var now: Int64 = 1 * sec

    init(
        retryOn: Set<RetryPolicy.Condition> = [.connectFailure, .gatewayError, .reset], attempts: Int = 3,
        idempotent: Bool = true, timeout: Int64 = 15 * sec, perTry: MeshDuration? = nil, hedgeAfter: MeshDuration? = nil,
        bufferBytes: Int = 1024, callDeadline: Bool = false, upstreamHTTP2: Bool = false, retry: Bool = true
    ) {
        var policy = RetryPolicy()
        policy.retryOn = retryOn
        policy.attempts = attempts
        policy.perTryTimeout = perTry
        policy.hedgeAfter = hedgeAfter
        policy.bufferBytes = bufferBytes
        let plan = ExchangeStateMachine.Plan(
            retry: retry ? policy : nil, idempotent: idempotent, deadline: now + timeout, callDeadline: callDeadline,
            idleTimeout: 60 * sec, upstreamHTTP2: upstreamHTTP2)
        machine = ExchangeStateMachine(plan: plan, now: now)
    }

    mutating func advance(_ nanos: Int64) { now += nanos }

    /// The first attempt: started, connected, the whole request (`body` bytes) sent.
    @discardableResult
    mutating func sendRequest(body: Int = 0, reused: Bool = false) -> ExchangeStateMachine.AttemptTimers {
        let timers = machine.attemptStarted(now: now)
        machine.attached(reused: reused, now: now)
        if body > 0 { _ = machine.requestBody(bytes: body, now: now) }
        _ = machine.requestEnd(now: now)
        return timers
    }

    mutating func failed(_ outcome: AttemptOutcome) -> ExchangeStateMachine.AttemptAction {
        machine.attemptFailed(outcome, now: now, admission: &admission, rng: &rng)
    }

    mutating func head(_ status: Int, grpc: Int? = nil, grpcContentType: Bool = false) -> ExchangeStateMachine.HeadAction {
        machine.responseHead(
            status: status, grpcStatus: grpc, grpcContentType: grpcContentType, now: now, admission: &admission, rng: &rng)
    }

    mutating func closed() -> ExchangeStateMachine.AttemptAction {
        machine.upstreamClosed(now: now, admission: &admission, rng: &rng)
    }

    mutating func refused() -> ExchangeStateMachine.AttemptAction {
        machine.upstreamRefused(now: now, admission: &admission, rng: &rng)
    }

    mutating func timer() -> ExchangeStateMachine.TimerAction {
        machine.timerFired(now: now, admission: &admission, rng: &rng)
    }

    /// Waits out a retry's backoff and starts the next attempt (connected and sent).
    mutating func nextAttempt(_ action: ExchangeStateMachine.AttemptAction) {
        guard case .retry(let r) = action else {
            Issue.record("expected a retry, got \(action)")
            return
        }
        advance(r.delay)
        let v1 = machine.backoffElapsed()
        #expect(v1)
        _ = machine.attemptStarted(now: now)
        machine.attached(reused: false, now: now)
    }
}

@Suite("Exchange state machine: retry conditions")
struct ExchangeRetryConditionTests {
    @Test func connectFailureIsRetriedForAnyMethodWithoutReplay() {
        var h = ExchangeHarness(idempotent: false)
        _ = h.machine.attemptStarted(now: h.now)
        let action = h.machine.connectFailed(reused: false, now: h.now, admission: &h.admission, rng: &h.rng)
        guard case .retry(let r) = action else {
            Issue.record("expected a retry, got \(action)")
            return
        }
        #expect(r.reason == "connect-failure")
        #expect(r.replay == false)  // nothing was sent: the pending parts go
        #expect(r.takesRetrySlot)
        #expect(h.machine.retries == 1)
    }

    @Test func resetAfterSendingIsRetriedOnlyForIdempotentMethods() {
        var get = ExchangeHarness()
        get.sendRequest()
        guard case .retry(let r) = get.closed() else {
            Issue.record("GET not retried")
            return
        }
        #expect(r.reason == "reset" && r.replay)

        var post = ExchangeHarness(idempotent: false)
        post.sendRequest()
        #expect(post.closed() == .fail(skipped: .nonIdempotent))
    }

    @Test func statusConditions() {
        var h = ExchangeHarness(retryOn: [.gatewayError])
        h.sendRequest()
        guard case .retry(let r) = h.head(503) else {
            Issue.record("503 not retried on gateway-error")
            return
        }
        #expect(r.reason == "gateway-error" && r.metricLabel == "gateway-error")
        h.nextAttempt(.retry(r))
        #expect(h.head(500) == .forward(skipped: nil))  // 500 is not a gateway error

        var listed = ExchangeHarness(retryOn: [.status(429)])
        listed.sendRequest()
        guard case .retry(let l) = listed.head(429) else {
            Issue.record("listed status not retried")
            return
        }
        #expect(l.reason == "429" && l.metricLabel == "status")

        var any5xx = ExchangeHarness(retryOn: [.fiveXX])
        any5xx.sendRequest()
        guard case .retry = any5xx.head(500) else {
            Issue.record("5xx not retried")
            return
        }

        var ok = ExchangeHarness(retryOn: [.fiveXX])
        ok.sendRequest()
        #expect(ok.head(404) == .forward(skipped: nil))
        #expect(ok.machine.phase == .streaming && ok.machine.responseStarted)
    }

    @Test func grpcStatusInResponseHeaders() {
        var h = ExchangeHarness(retryOn: [.grpc(.unavailable)])
        h.sendRequest()
        guard case .retry(let r) = h.head(200, grpc: 14, grpcContentType: true) else {
            Issue.record("trailers-only UNAVAILABLE not retried")
            return
        }
        #expect(r.reason == "unavailable" && r.metricLabel == "grpc")
    }

    @Test func refusedStreamAndTimeoutConditions() {
        var refused = ExchangeHarness(retryOn: [.refusedStream])
        refused.sendRequest()
        guard case .retry = refused.failed(.refusedStream) else {
            Issue.record("refused stream not retried")
            return
        }
        // A per-try timeout counts under reset, gateway-error and 5xx, not connect-failure.
        var connectOnly = ExchangeHarness(retryOn: [.connectFailure])
        connectOnly.sendRequest()
        #expect(connectOnly.failed(.timeout) == .fail(skipped: nil))
    }

    @Test func inboundHasNoRetries() {
        var h = ExchangeHarness(retry: false)
        _ = h.machine.attemptStarted(now: h.now)
        let v2 = h.machine.connectFailed(reused: false, now: h.now, admission: &h.admission, rng: &h.rng)
        #expect(v2 == .fail(skipped: nil))
        var resp = ExchangeHarness(retry: false)
        resp.sendRequest()
        #expect(resp.head(503) == .forward(skipped: nil))
    }
}

@Suite("Exchange state machine: limits on retries")
struct ExchangeRetryLimitTests {
    @Test func attemptsAreBounded() {
        var h = ExchangeHarness(attempts: 2)
        h.sendRequest()
        let first = h.closed()
        h.nextAttempt(first)
        #expect(h.machine.attempts == 2)
        #expect(h.closed() == .fail(skipped: .attempts))
        #expect(h.machine.phase == .done)
    }

    @Test func budgetExhaustion() {
        var h = ExchangeHarness(attempts: 5)
        h.admission = TestAdmission(ratio: 0, minPerSecond: 0.2, now: h.now)  // 2 retries per 10 s window
        h.sendRequest()
        var action = h.closed()
        h.nextAttempt(action)
        action = h.closed()
        h.nextAttempt(action)
        #expect(h.closed() == .fail(skipped: .budget))
        #expect(h.admission.taken == 2)
    }

    @Test func concurrentRetryLimitOnlyForTheFirstRetry() {
        var refused = ExchangeHarness()
        refused.admission.slotsFree = false
        refused.sendRequest()
        #expect(refused.closed() == .fail(skipped: .limit))

        // A request already in retry keeps its slot: later retries do not ask again.
        var h = ExchangeHarness()
        h.sendRequest()
        let first = h.closed()
        h.nextAttempt(first)
        h.admission.slotsFree = false
        guard case .retry(let second) = h.closed() else {
            Issue.record("second retry refused")
            return
        }
        #expect(!second.takesRetrySlot && h.machine.holdsRetrySlot)
    }

    @Test func deadlineLeavesNoRoomForAnotherAttempt() {
        var h = ExchangeHarness(timeout: 100 * ms)
        h.sendRequest()
        h.advance(100 * ms - 500_000)
        #expect(h.closed() == .fail(skipped: .deadline))
    }

    @Test func bodyTooLargeToReplay() {
        var h = ExchangeHarness(bufferBytes: 10)
        _ = h.machine.attemptStarted(now: h.now)
        let v3 = h.machine.requestBody(bytes: 6, now: h.now)
        #expect(v3)
        let v4 = h.machine.requestBody(bytes: 5, now: h.now)
        #expect(!v4)  // 11 > 10: the replay buffer goes
        #expect(!h.machine.keepsParts)
        // Not yet sent: a connect failure is still retried (the parts are still pending).
        guard case .retry = h.machine.connectFailed(reused: false, now: h.now, admission: &h.admission, rng: &h.rng) else {
            Issue.record("connect failure not retried")
            return
        }
        var sent = ExchangeHarness(bufferBytes: 10)
        sent.sendRequest(body: 11)
        #expect(sent.closed() == .fail(skipped: .bodyTooLarge))
    }

    @Test func backoffIsFullJitterAndRepeatableWithASeed() {
        var delays: [[Int64]] = []
        for _ in 0..<2 {
            var h = ExchangeHarness(attempts: 4)
            h.sendRequest()
            var seen: [Int64] = []
            for n in 1...3 {
                let action = h.closed()
                guard case .retry(let r) = action else {
                    Issue.record("retry \(n) refused: \(action)")
                    return
                }
                // retry n waits in [0, min(250 ms, 25 ms × 2^(n-1))]
                #expect(r.delay >= 0 && r.delay <= min(250 * ms, 25 * ms << (n - 1)))
                #expect(h.machine.phase == .backoff(until: h.now + r.delay))
                seen.append(r.delay)
                h.nextAttempt(action)
            }
            delays.append(seen)
        }
        #expect(delays[0] == delays[1])
    }
}

@Suite("Exchange state machine: timeouts")
struct ExchangeTimeoutTests {
    @Test func perTryTimeoutRetriesThenTheTotalDeadlineEndsIt() {
        var h = ExchangeHarness(timeout: 1 * sec, perTry: .milliseconds(300))
        let timers = h.sendRequest()
        #expect(timers.perTry == h.now + 300 * ms && timers.hedge == nil)
        h.advance(300 * ms)
        #expect(h.timer() == .none)  // not past it yet
        h.advance(1 * ms)
        let action = h.timer()
        guard case .attempt(.retry(let r)) = action else {
            Issue.record("per-try timeout did not retry: \(action)")
            return
        }
        #expect(r.reason == "timeout")
        h.nextAttempt(.retry(r))
        h.advance(1 * sec)
        #expect(h.timer() == .timeout)
        #expect(h.machine.phase == .done)
        #expect(h.timer() == .none)
    }

    @Test func totalDeadlineDuringBackoff() {
        var h = ExchangeHarness(timeout: 50 * ms)
        h.sendRequest()
        _ = h.closed()
        h.advance(51 * ms)
        #expect(h.timer() == .timeout)
    }

    @Test func callDeadlineWhileTheResponseStreams() {
        var h = ExchangeHarness(timeout: 200 * ms, callDeadline: true)
        h.sendRequest()
        #expect(h.head(200) == .forward(skipped: nil))
        h.advance(150 * ms)
        #expect(h.timer() == .none)
        h.advance(51 * ms)
        #expect(h.timer() == .callDeadline)
    }

    @Test func routeTimeoutStopsAtTheResponseHead() {
        var h = ExchangeHarness(timeout: 200 * ms)
        h.sendRequest()
        #expect(h.head(200) == .forward(skipped: nil))
        h.advance(1 * sec)
        #expect(h.timer() == .none)  // the route's timeout covers only the head
    }

    @Test func idleTimeout() {
        var waiting = ExchangeHarness()
        waiting.sendRequest()
        waiting.advance(10 * sec)
        #expect(waiting.timer() == .none)  // within 15 s deadline and 60 s idle
        var streaming = ExchangeHarness(timeout: 120 * sec)
        streaming.sendRequest()
        _ = streaming.head(200)
        streaming.advance(30 * sec)
        streaming.machine.responseBody(now: streaming.now)
        streaming.advance(59 * sec)
        #expect(streaming.timer() == .none)
        streaming.advance(2 * sec)
        #expect(streaming.timer() == .idle(responseStarted: true))
    }
}

@Suite("Exchange state machine: hedging")
struct ExchangeHedgingTests {
    func hedged() -> ExchangeHarness {
        var h = ExchangeHarness(retryOn: [.gatewayError], hedgeAfter: .milliseconds(50))
        let timers = h.sendRequest()
        #expect(timers.hedge == h.now + 50 * ms)
        h.advance(51 * ms)
        #expect(h.timer() == .hedge)
        let v5 = h.machine.hedgeStarting(now: h.now, admission: &h.admission)
        #expect(v5)
        h.machine.hedgeSent()
        #expect(h.machine.hedge == .running)
        return h
    }

    @Test func hedgeWins() {
        var h = hedged()
        let v6 = h.machine.hedgeHead(status: 200, grpcStatus: nil)
        #expect(v6)
        #expect(h.machine.hedge == .spent)
        #expect(h.head(200) == .forward(skipped: nil))  // the promoted attempt's head goes on
    }

    @Test func firstAttemptWins() {
        var h = hedged()
        #expect(h.head(200) == .forward(skipped: nil))
        #expect(h.machine.hedge == .spent)
        let v7 = h.machine.hedgeHead(status: 200, grpcStatus: nil)
        #expect(!v7)  // too late
    }

    @Test func aBadHedgedAnswerIsDropped() {
        var h = hedged()
        let v8 = h.machine.hedgeHead(status: 503, grpcStatus: nil)
        #expect(!v8)
        #expect(h.machine.hedge == .spent)
        #expect(h.machine.phase == .waiting)
        #expect(h.head(200) == .forward(skipped: nil))
    }

    @Test func aFailingFirstAttemptHandsOverToTheHedge() {
        var h = hedged()
        #expect(h.closed() == .promoteHedge)
        var bad = hedged()
        #expect(bad.head(503) == .promoteHedge)
    }

    @Test func onlyOncePerRequest() {
        var h = hedged()
        h.machine.hedgeEnded()
        h.advance(1 * sec)
        #expect(h.timer() == .none)
    }

    @Test func notForIncompleteRequestsOrNonIdempotentMethodsOrWithoutBudget() {
        var incomplete = ExchangeHarness(hedgeAfter: .milliseconds(50))
        _ = incomplete.machine.attemptStarted(now: incomplete.now)
        incomplete.machine.attached(reused: false, now: incomplete.now)
        incomplete.advance(51 * ms)
        #expect(incomplete.timer() == .none)
        #expect(incomplete.machine.hedge == .spent)

        var post = ExchangeHarness(idempotent: false, hedgeAfter: .milliseconds(50))
        post.sendRequest()
        post.advance(51 * ms)
        #expect(post.timer() == .none)

        var broke = ExchangeHarness(hedgeAfter: .milliseconds(50))
        broke.admission = TestAdmission(ratio: 0, minPerSecond: 0, now: broke.now)
        broke.sendRequest()
        broke.advance(51 * ms)
        #expect(broke.timer() == .hedge)
        let v9 = broke.machine.hedgeStarting(now: broke.now, admission: &broke.admission)
        #expect(!v9)
        #expect(broke.machine.hedge == .spent)
    }
}

@Suite("Exchange state machine: held gRPC responses")
struct ExchangeHeldResponseTests {
    func holding() -> ExchangeHarness {
        var h = ExchangeHarness(retryOn: [.grpc(.unavailable)], bufferBytes: 100)
        h.sendRequest()
        #expect(h.head(200, grpcContentType: true) == .hold)
        return h
    }

    @Test func trailersAskForARetry() {
        var h = holding()
        let v10 = h.machine.heldBody(bytes: 0, now: h.now)
        #expect(!v10)
        let action = h.machine.heldEnd(grpcStatus: 14, now: h.now, admission: &h.admission, rng: &h.rng)
        guard case .retry(let r) = action else {
            Issue.record("held UNAVAILABLE not retried: \(action)")
            return
        }
        #expect(r.reason == "unavailable" && r.replay)
        #expect(!h.machine.responseStarted)
    }

    @Test func goodTrailersReleaseTheResponse() {
        var h = holding()
        let v11 = h.machine.heldEnd(grpcStatus: 0, now: h.now, admission: &h.admission, rng: &h.rng)
        #expect(v11 == .release(skipped: nil))
        #expect(h.machine.responseStarted)
    }

    @Test func theFirstMessageReleasesTheResponse() {
        // Held until the first message only: a bidi call whose client waits for each echo must not
        // stall; after a message the call is no longer retried.
        var h = holding()
        let v12 = h.machine.heldBody(bytes: 5, now: h.now)
        #expect(v12)
        #expect(h.machine.phase == .streaming)
        #expect(h.closed() == .breakResponse)  // streamed: no retry any more
    }

    @Test func noHoldOnTheLastAttemptOrWithoutAGRPCCondition() {
        var last = ExchangeHarness(retryOn: [.grpc(.unavailable)], attempts: 1)
        last.sendRequest()
        #expect(last.head(200, grpcContentType: true) == .forward(skipped: nil))
        var plain = ExchangeHarness(retryOn: [.gatewayError])
        plain.sendRequest()
        #expect(plain.head(200, grpcContentType: true) == .forward(skipped: nil))
    }
}

@Suite("Exchange state machine: reopen, broken responses and cancellation")
struct ExchangeLifecycleTests {
    @Test func aStalePooledConnectionIsReopenedOnce() {
        var h = ExchangeHarness(retryOn: [.connectFailure])
        h.sendRequest(reused: true)
        #expect(h.closed() == .reopen)
        #expect(h.machine.phase == .connecting)
        h.machine.attached(reused: true, now: h.now)
        #expect(h.closed() == .fail(skipped: nil))  // once only; reset is not in retryOn
    }

    @Test func notReopenedOnceTheBodyStarted() {
        var h = ExchangeHarness(retryOn: [.connectFailure])
        _ = h.machine.attemptStarted(now: h.now)
        h.machine.attached(reused: true, now: h.now)
        h.machine.bodySent(now: h.now)
        #expect(h.closed() == .fail(skipped: nil))
    }

    @Test func aGoneMultiplexedConnectionIsReopenedOnce() {
        var h = ExchangeHarness(retryOn: [], upstreamHTTP2: true)
        _ = h.machine.attemptStarted(now: h.now)
        let v13 = h.machine.connectFailed(reused: true, now: h.now, admission: &h.admission, rng: &h.rng)
        #expect(v13 == .reopen)
        let v14 = h.machine.connectFailed(reused: true, now: h.now, admission: &h.admission, rng: &h.rng)
        #expect(v14 == .fail(skipped: nil))
    }

    @Test func aRefusedStreamGoesAgainWhateverTheMethodUpToThreeTimes() {
        // A gRPC call (POST) on an HTTP/2 upstream, no retry policy: its body is kept all the same.
        var h = ExchangeHarness(idempotent: false, upstreamHTTP2: true, retry: false)
        #expect(h.machine.plan.keepsReplay && h.machine.plan.replayLimit == 64 * 1024)
        _ = h.machine.attemptStarted(now: h.now)
        h.machine.attached(reused: true, now: h.now)
        let kept = h.machine.requestBody(bytes: 12, now: h.now)
        #expect(kept)
        h.machine.bodySent(now: h.now)
        _ = h.machine.requestEnd(now: h.now)
        for _ in 0..<ExchangeStateMachine.maxRefusedResends {
            #expect(h.refused() == .reopen)
            #expect(h.machine.phase == .connecting && h.machine.attempts == 1 && h.machine.retries == 0)
            h.machine.attached(reused: false, now: h.now)
        }
        #expect(h.refused() == .fail(skipped: nil))  // no more; no retry policy
    }

    @Test func aRefusedStreamWithoutABodyGoesAgainEvenWhenStaleReopenWasUsed() {
        var h = ExchangeHarness(retryOn: [], upstreamHTTP2: true)
        h.sendRequest(reused: true)
        #expect(h.closed() == .reopen)  // the connection went away as the stream opened
        h.machine.attached(reused: false, now: h.now)
        #expect(h.refused() == .reopen)  // refused: counted apart from the stale reopen
        h.machine.attached(reused: false, now: h.now)
        #expect(h.machine.refusedResends == 1 && h.machine.reopened)
    }

    @Test func aRefusedStreamWhoseBodyWasNotKeptIsTheRetryPolicysCall() {
        var h = ExchangeHarness(retryOn: [.refusedStream], idempotent: false, bufferBytes: 16, upstreamHTTP2: true)
        #expect(h.machine.plan.replayLimit == 16)
        _ = h.machine.attemptStarted(now: h.now)
        h.machine.attached(reused: true, now: h.now)
        let kept = h.machine.requestBody(bytes: 32, now: h.now)
        #expect(!kept)  // over retry.bufferBytes
        h.machine.bodySent(now: h.now)
        _ = h.machine.requestEnd(now: h.now)
        guard case .fail = h.refused() else {
            Issue.record("a body that was not kept cannot go again")
            return
        }
    }

    @Test func aRefusedStreamAfterTheResponseStartedBreaksIt() {
        var h = ExchangeHarness(upstreamHTTP2: true)
        h.sendRequest()
        #expect(h.head(200) == .forward(skipped: nil))
        #expect(h.refused() == .breakResponse)
    }

    @Test func http1UpstreamsKeepNoReplayWithoutARetryPolicy() {
        let plan = ExchangeStateMachine.Plan(retry: nil, idempotent: false, deadline: .max, idleTimeout: .max)
        #expect(!plan.keepsReplay && plan.replayLimit == 0)
    }

    @Test func midResponseCloseBreaksTheResponse() {
        var h = ExchangeHarness()
        h.sendRequest()
        _ = h.head(200)
        #expect(h.closed() == .breakResponse)
        var complete = ExchangeHarness()
        complete.sendRequest()
        _ = complete.head(200)
        let v15 = complete.machine.responseEnd(now: complete.now)
        #expect(v15)
        #expect(complete.closed() == .none)
    }

    @Test func earlyResponseBeforeTheRequestEnded() {
        var h = ExchangeHarness()
        _ = h.machine.attemptStarted(now: h.now)
        h.machine.attached(reused: false, now: h.now)
        _ = h.head(413)
        let v16 = h.machine.responseEnd(now: h.now)
        #expect(!v16)  // the rest of the request is dropped
    }

    @Test func cancellationAtEveryStage() {
        // connecting, waiting, backoff, holding, streaming: after cancel nothing more is decided.
        var stages: [ExchangeHarness] = []
        var connecting = ExchangeHarness()
        _ = connecting.machine.attemptStarted(now: connecting.now)
        stages.append(connecting)
        var waiting = ExchangeHarness()
        waiting.sendRequest()
        stages.append(waiting)
        var backoff = ExchangeHarness()
        backoff.sendRequest()
        _ = backoff.closed()
        stages.append(backoff)
        var holding = ExchangeHarness(retryOn: [.grpc(.unavailable)])
        holding.sendRequest()
        _ = holding.head(200, grpcContentType: true)
        stages.append(holding)
        var streaming = ExchangeHarness()
        streaming.sendRequest()
        _ = streaming.head(200)
        stages.append(streaming)

        for (i, var h) in stages.enumerated() {
            let responded = h.machine.cancel()
            #expect(responded == (i == 4))
            #expect(h.machine.phase == .done)
            h.advance(100 * sec)
            #expect(h.timer() == .none)
            let v17 = h.machine.backoffElapsed()
            #expect(!v17)
            #expect(h.closed() == .none)
            #expect(h.failed(.reset) == .none)
            let v18 = h.machine.connectFailed(reused: false, now: h.now, admission: &h.admission, rng: &h.rng)
            #expect(v18 == .none)
            let v19 = h.machine.hedgeHead(status: 200, grpcStatus: nil)
            #expect(!v19)
            #expect(!h.machine.keepsParts)
        }
    }

    @Test func grpcStatusForMetrics() {
        var h = ExchangeHarness(timeout: 100 * ms, callDeadline: true)
        let m = h.machine
        #expect(m.grpcStatus(recorded: 0, httpStatus: 200, error: nil, now: h.now) == 0)
        #expect(m.grpcStatus(recorded: nil, httpStatus: 499, error: nil, now: h.now) == 1)  // CANCELLED
        h.advance(100 * ms)
        #expect(m.grpcStatus(recorded: nil, httpStatus: 499, error: nil, now: h.now) == 4)  // DEADLINE_EXCEEDED
        #expect(m.grpcStatus(recorded: nil, httpStatus: 503, error: .connectFailed, now: h.now) == 14)
        #expect(m.grpcStatus(recorded: nil, httpStatus: 500, error: nil, now: h.now) == 2)
    }

    @Test func aCallItsClientCutOffAfterTheResponseHeadIsCancelled() {
        var h = ExchangeHarness(timeout: 100 * ms, callDeadline: true)
        _ = h.sendRequest()
        _ = h.head(200, grpcContentType: true)
        // The client resets the stream between the response head and the trailers: the head's
        // status (200) stays the HTTP status, the call is CANCELLED — not UNKNOWN for its missing
        // grpc-status.
        let responded = h.machine.clientLeft()
        #expect(responded)
        #expect(h.machine.grpcStatus(recorded: nil, httpStatus: 200, error: nil, now: h.now) == 1)
        h.advance(100 * ms)
        #expect(h.machine.grpcStatus(recorded: nil, httpStatus: 200, error: nil, now: h.now) == 4)

        // Its stream closing once the whole response is out is not the client giving up.
        var done = ExchangeHarness(timeout: 100 * ms, callDeadline: true)
        _ = done.sendRequest()
        _ = done.head(200, grpcContentType: true)
        _ = done.machine.responseEnd(now: done.now)
        done.machine.clientLeft()
        #expect(done.machine.grpcStatus(recorded: 0, httpStatus: 200, error: nil, now: done.now) == 0)
        #expect(done.machine.grpcStatus(recorded: nil, httpStatus: 200, error: nil, now: done.now) == 2)
    }
}

@Suite("Local replies")
struct LocalReplyTests {
    @Test func plainHTTP() {
        let r = LocalReply.error(.rateLimited, detail: "slow down", grpc: false, http2: false, close: true, retryAfter: 2)
        #expect(r.status == 429 && r.reason == "Too Many Requests")
        #expect(r.body == "meshd: slow down\n")
        #expect(r.headers.contains(.init("retry-after", "2")))
        #expect(r.headers.contains(.init("connection", "close")))
        #expect(r.headers.contains(.init("content-length", "17")))
        #expect(r.headers.contains(.init(MeshError.headerName, "rate-limited")))
        // HTTP/2 has no connection header.
        let h2 = LocalReply.error(.noRoute, detail: "x", grpc: false, http2: true, close: true)
        #expect(!h2.headers.contains { $0.name == "connection" })
    }

    @Test func grpcOverHTTP2IsTrailersOnly() {
        let r = LocalReply.error(.connectFailed, detail: "no way", grpc: true, http2: true, close: false)
        #expect(r.status == 200 && r.trailersOnly && r.trailers == nil && r.body.isEmpty)
        #expect(r.headers.contains(.init("grpc-status", "14")))
        #expect(r.headers.contains(.init("grpc-message", "meshd: no way")))
        #expect(r.grpcStatus == 14)
    }

    @Test func grpcOverHTTP1CarriesTheStatusInTrailers() {
        let r = LocalReply.error(.upstreamTimeout, detail: "late", grpc: true, http2: false, close: false)
        #expect(!r.trailersOnly)
        #expect(r.trailers?.contains(.init("grpc-status", "4")) == true)
        #expect(!r.headers.contains { $0.name == "grpc-status" })
    }
}
