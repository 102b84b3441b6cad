import Testing

@testable import MeshCore

@Suite("GCRA rate limit")
struct GCRATests {
    let s: Int64 = 1_000_000_000

    /// Runs `requests` at `times` against one TAT, as every loop does against the shared one.
    func admitted(_ gcra: GCRA, at times: [Int64]) -> Int {
        var tat: Int64 = 0
        var n = 0
        for t in times {
            if case .admit(let next) = gcra.decide(tat: tat, now: t) {
                tat = next
                n += 1
            }
        }
        return n
    }

    @Test func burstThenRate() {
        let gcra = GCRA(ratePerSecond: 10, burst: 5)
        // 100 requests at the same instant: the burst.
        #expect(admitted(gcra, at: Array(repeating: 10 * s, count: 100)) == 5)
        // 1000 requests spread evenly over 10 s: the burst plus 10 per second.
        let spread = (0..<1000).map { 10 * s + Int64($0) * 10_000_000 }
        let n = admitted(gcra, at: spread)
        #expect(n >= 100 && n <= 105, "\(n)")
    }

    @Test func retryAfter() {
        let gcra = GCRA(ratePerSecond: 2, burst: 1)
        guard case .admit(let tat) = gcra.decide(tat: 0, now: s) else {
            Issue.record("first request refused")
            return
        }
        guard case .reject(let after) = gcra.decide(tat: tat, now: s) else {
            Issue.record("second request admitted")
            return
        }
        #expect(after == s / 2)
        #expect(GCRA.retryAfterSeconds(after) == 1)
        #expect(GCRA.retryAfterSeconds(3 * s + 1) == 4)
    }

    @Test func idleLimitStartsFull() {
        let gcra = GCRA(ratePerSecond: 1, burst: 3)
        var tat: Int64 = 0
        for _ in 0..<3 {
            guard case .admit(let next) = gcra.decide(tat: tat, now: 100 * s) else {
                Issue.record("refused within the burst")
                return
            }
            tat = next
        }
        #expect(gcra.decide(tat: tat, now: 100 * s) != .admit(newTAT: tat + s))
        // An hour later the bucket is full again.
        if case .reject = gcra.decide(tat: tat, now: 3700 * s) { Issue.record("still refused after an hour") }
    }
}
