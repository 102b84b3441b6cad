import Testing

@testable import MeshCore

let ms: Int64 = 1_000_000
let sec: Int64 = 1_000_000_000

@Suite("Retry policy, backoff and budget")
struct RetryTests {
    @Test func reasonsFollowRetryOn() {
        var p = RetryPolicy()
        p.retryOn = [.connectFailure, .gatewayError, .status(429), .grpc(.unavailable)]
        #expect(p.retryReason(for: .connectFailure) == "connect-failure")
        #expect(p.retryReason(for: .reset) == nil)
        #expect(p.retryReason(for: .timeout) == "timeout")
        #expect(p.retryReason(for: .response(status: 503, grpcStatus: nil)) == "gateway-error")
        #expect(p.retryReason(for: .response(status: 500, grpcStatus: nil)) == nil)
        #expect(p.retryReason(for: .response(status: 429, grpcStatus: nil)) == "429")
        #expect(p.retryReason(for: .response(status: 200, grpcStatus: 14)) == "unavailable")
        #expect(p.retryReason(for: .response(status: 200, grpcStatus: 13)) == nil)
        #expect(p.retryReason(for: .response(status: 200, grpcStatus: nil)) == nil)
        p.retryOn = [.fiveXX]
        #expect(p.retryReason(for: .response(status: 500, grpcStatus: nil)) == "5xx")
        #expect(p.retryReason(for: .refusedStream) == nil)
        #expect(RetryPolicy.Condition.parse("deadline-exceeded") == .grpc(.deadlineExceeded))
        #expect(RetryPolicy.Condition.parse("nope") == nil)
    }

    @Test func backoffIsFullJitterWithinBounds() {
        let b = Backoff(base: .milliseconds(25), max: .milliseconds(250))
        var rng = SplitMix64(seed: 3)
        for retry in 1...8 {
            let ceiling = min(25 * ms << Int64(retry - 1), 250 * ms)
            var sum: Int64 = 0
            for _ in 0..<2000 {
                let d = b.delay(retry: retry, using: &rng).nanoseconds
                #expect(d >= 0 && d <= ceiling)
                sum += d
            }
            // Uniform on [0, ceiling]: the mean is about half the ceiling.
            let mean = Double(sum) / 2000
            #expect(abs(mean / Double(ceiling) - 0.5) < 0.05, "retry \(retry)")
        }
    }

    @Test func budgetAllowsRatioPlusMinimum() {
        var b = RetryBudget(config: .init(ratio: 0.2, minPerSecond: 10, window: .seconds(10)), now: 0)
        // With no traffic, 10/s over 10 s = 100 retries.
        var allowed = 0
        for _ in 0..<500 where b.tryRetry(now: 0) { allowed += 1 }
        #expect(allowed == 100)
        // 1000 requests add 20 % = 200 more.
        for _ in 0..<1000 { b.recordRequest(now: 1 * sec) }
        for _ in 0..<500 where b.tryRetry(now: 1 * sec) { allowed += 1 }
        #expect(allowed == 300)
    }

    @Test func budgetWindowSlides() {
        var b = RetryBudget(config: .init(ratio: 0, minPerSecond: 1, window: .seconds(10)), now: 0)
        var first = 0
        for _ in 0..<50 where b.tryRetry(now: 0) { first += 1 }
        #expect(first == 10)
        let r1 = b.tryRetry(now: 5 * sec)
        #expect(!r1)
        // After the window has passed, the old retries no longer count.
        var later = 0
        for _ in 0..<50 where b.tryRetry(now: 11 * sec) { later += 1 }
        #expect(later == 10)
        #expect(b.counts.retries == 10)
    }

    @Test func budgetKeepsRetriesUnderTwentyPercentPlusTenPerSecondUnderSustainedFailure() {
        // Every request fails and would be retried: over 60 s at 100 req/s, retries stay within budget.
        var b = RetryBudget(config: .init(), now: 0)
        var requests = 0
        var retries = 0
        var t: Int64 = 0
        while t < 60 * sec {
            b.recordRequest(now: t)
            requests += 1
            if b.tryRetry(now: t) { retries += 1 }
            t += 10 * ms
        }
        let limit = 0.2 * Double(requests) + 10 * 60 + 100  // + one window of the minimum at the start
        #expect(Double(retries) <= limit, "\(retries) retries for \(requests) requests")
        #expect(retries >= requests / 5)
    }

    @Test func circuitBreakerLimits() {
        var l = CircuitBreakerLimits()
        l.maxRequests = 2
        l.maxRetries = 1
        #expect(l.admits(.requests, current: 1))
        #expect(!l.admits(.requests, current: 2))
        #expect(!l.admits(.retries, current: 1))
        #expect(l.admits(.pending, current: 1023) && !l.admits(.pending, current: 1024))
        #expect(CircuitBreakerLimits.Overflow.requests.error == .overflowRequests)
        #expect(CircuitBreakerLimits.Overflow.retries.error == nil)
        #expect(CircuitBreakerLimits().maxConnections == 1024)
    }
}

@Suite("Outlier detection and rate limiting")
struct OutlierTests {
    static func detector(_ configure: (inout OutlierDetector.Config) -> Void = { _ in }) -> OutlierDetector {
        var c = OutlierDetector.Config()
        configure(&c)
        return OutlierDetector(config: c)
    }

    @Test func ejectsAfterFiveConsecutive5xxAndReturns() {
        var d = Self.detector()
        let bad = AttemptOutcome.response(status: 500, grpcStatus: nil)
        for i in 1...4 { let r2 = d.record(address: "a", outcome: bad, total: 10, now: Int64(i)); #expect(r2 == nil) }
        let action = d.record(address: "a", outcome: bad, total: 10, now: 5)
        #expect(action == .eject(address: "a", until: 5 + 30 * sec, times: 1))
        let r3 = d.expire(now: 29 * sec)
        #expect(r3.isEmpty)
        let r4 = d.expire(now: 31 * sec)
        #expect(r4 == ["a"])
        #expect(d.ejectedUntil("a") == nil)
    }

    @Test func aSuccessResetsTheCount() {
        var d = Self.detector()
        let bad = AttemptOutcome.response(status: 503, grpcStatus: nil)
        for _ in 0..<4 { _ = d.record(address: "a", outcome: bad, total: 10, now: 0) }
        _ = d.record(address: "a", outcome: .response(status: 200, grpcStatus: nil), total: 10, now: 0)
        for _ in 0..<4 { let r5 = d.record(address: "a", outcome: bad, total: 10, now: 0); #expect(r5 == nil) }
    }

    @Test func sharedCountsTripAtTheThresholdWhateverLoopSawThem() {
        // Two loops' detectors fed the endpoint's shared consecutive counts (as meshd does): the one
        // whose outcome makes the count reach 5 ejects, after exactly five failures in all.
        var loop0 = Self.detector()
        var loop1 = Self.detector()
        var shared = 0
        var ejections: [OutlierDetector.Action] = []
        for i in 1...5 {
            shared += 1
            let now = Int64(i)
            let action =
                i % 2 == 0
                ? loop0.record(address: "a", consecutive: (shared, 0), total: 3, now: now)
                : loop1.record(address: "a", consecutive: (shared, 0), total: 3, now: now)
            if let action { ejections.append(action) }
            if i < 5 { #expect(ejections.isEmpty) }
        }
        #expect(ejections == [.eject(address: "a", until: 5 + 30 * sec, times: 1)])
    }

    @Test func connectFailuresCountAsGatewayFailures() {
        var d = Self.detector { $0.consecutiveGatewayFailures = 3 }
        _ = d.record(address: "a", outcome: .connectFailure, total: 3, now: 0)
        _ = d.record(address: "a", outcome: .reset, total: 3, now: 0)
        let r6 = d.record(address: "a", outcome: .timeout, total: 3, now: 0)
        #expect(r6 != nil)
    }

    @Test func ejectionTimeGrowsWithEachEjectionAndIsCapped() {
        var d = Self.detector {
            $0.consecutive5xx = 1
            $0.baseEjectionTime = .seconds(30)
            $0.maxEjectionTime = .seconds(70)
        }
        let bad = AttemptOutcome.response(status: 500, grpcStatus: nil)
        var now: Int64 = 0
        var durations: [Int64] = []
        for _ in 0..<3 {
            guard case .eject(_, let until, _) = d.record(address: "a", outcome: bad, total: 10, now: now) else {
                Issue.record("no ejection")
                return
            }
            durations.append(until - now)
            now = until
            _ = d.expire(now: now)
        }
        #expect(durations == [30 * sec, 60 * sec, 70 * sec])
    }

    @Test func multiplierDecaysWhileHealthy() {
        var d = Self.detector {
            $0.consecutive5xx = 1
            $0.interval = .seconds(10)
        }
        let bad = AttemptOutcome.response(status: 500, grpcStatus: nil)
        _ = d.record(address: "a", outcome: bad, total: 10, now: 0)
        _ = d.expire(now: 30 * sec)  // back
        _ = d.expire(now: 41 * sec)  // one healthy interval: multiplier 1 → 0
        guard case .eject(_, let until, let times) = d.record(address: "a", outcome: bad, total: 10, now: 42 * sec) else {
            Issue.record("no ejection")
            return
        }
        #expect(times == 1)
        #expect(until == 72 * sec)
    }

    @Test func neverMoreThanMaxEjectionPercentButAlwaysOne() {
        var d = Self.detector { $0.consecutive5xx = 1 }
        let bad = AttemptOutcome.response(status: 500, grpcStatus: nil)
        // 3 endpoints, 10 %: 0.3 → at least one may be ejected, not two.
        let r7 = d.record(address: "a", outcome: bad, total: 3, now: 0)
        #expect(r7 != nil)
        let r8 = d.record(address: "b", outcome: bad, total: 3, now: 0)
        #expect(r8 == nil)
        // A single endpoint is never ejected.
        var single = Self.detector { $0.consecutive5xx = 1 }
        let r9 = single.record(address: "x", outcome: bad, total: 1, now: 0)
        #expect(r9 == nil)
        // 20 endpoints at 10 %: two.
        var many = Self.detector { $0.consecutive5xx = 1 }
        let ejected = (0..<20).compactMap { many.record(address: "e\($0)", outcome: bad, total: 20, now: 0) }
        #expect(ejected.count == 2)
    }

    @Test func ejectionsFromOtherLoopsAreHonoured() {
        var d = Self.detector()
        d.markEjected(address: "a", until: 10 * sec, times: 2)
        #expect(d.ejectedCount == 1)
        let r10 = d.record(address: "a", outcome: .response(status: 500, grpcStatus: nil), total: 10, now: 0)
        #expect(r10 == nil)
        let r11 = d.expire(now: 10 * sec)
        #expect(r11 == ["a"])
    }

    @Test func tokenBucket() {
        var b = TokenBucket(rate: 100, burst: 200, now: 0)
        var taken = 0
        for _ in 0..<500 where b.take(now: 0) { taken += 1 }
        #expect(taken == 200)
        #expect(b.retryAfterSeconds(now: 0) == 1)
        // 0.5 s later: 50 more.
        taken = 0
        for _ in 0..<500 where b.take(now: sec / 2) { taken += 1 }
        #expect(taken == 50)
        var slow = TokenBucket(rate: 0.1, burst: 1, now: 0)
        let r12 = slow.take(now: 0)
        #expect(r12)
        let r13 = slow.take(now: 0)
        #expect(!r13)
        #expect(slow.retryAfterSeconds(now: 0) == 10)
        #expect(slow.isFull(now: 10 * sec))
    }
}
