import Testing

@testable import MeshCore

@Suite("Rapid-reset limiter")
struct PrematureResetLimiterTests {
    func record(_ limiter: inout PrematureResetLimiter, _ now: Int64) -> Bool { limiter.record(now: now) }

    @Test func overTheLimitWithinTheWindow() {
        var limiter = PrematureResetLimiter(limit: 3, window: .seconds(10))
        let s: Int64 = 1_000_000_000
        #expect(!record(&limiter, 5 * s))
        #expect(!record(&limiter, 6 * s))
        #expect(!record(&limiter, 7 * s))
        #expect(record(&limiter, 8 * s))
    }

    @Test func aNewWindowStartsAfresh() {
        var limiter = PrematureResetLimiter(limit: 2, window: .seconds(10))
        let s: Int64 = 1_000_000_000
        #expect(!record(&limiter, 0))
        #expect(!record(&limiter, 9 * s))
        #expect(!record(&limiter, 10 * s))  // the window of t=0 is over
        #expect(!record(&limiter, 11 * s))
        #expect(record(&limiter, 12 * s))
    }
}
