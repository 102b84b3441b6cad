import Dispatch
import MeshCore
import Testing

@testable import MeshProxy

@Suite("State shared by every event loop")
struct SharedStateTests {
    @Test func routeLimitHoldsForAllThreadsTogether() async {
        let route = SharedRouteState(
            name: "r", rateLimit: RateLimitConfig(requestsPerSecond: 100, burst: 10), perSource: false, retryMinimumPerSecond: 10)
        // Four threads offer 4 × 5000 requests spread over one simulated second.
        let admitted = await withTaskGroup(of: Int.self) { group in
            for t in 0..<4 {
                group.addTask {
                    var n = 0
                    for i in 0..<5000 where route.admit(source: "10.0.0.\(t)", now: 1_000_000_000 + Int64(i) * 200_000) == nil {
                        n += 1
                    }
                    return n
                }
            }
            return await group.reduce(0, +)
        }
        #expect(admitted >= 105 && admitted <= 111, "\(admitted)")
    }

    @Test func perSourceLimitsAreSeparateAndShared() {
        let route = SharedRouteState(
            name: "r", rateLimit: RateLimitConfig(requestsPerSecond: 1, burst: 3), perSource: true, retryMinimumPerSecond: 0)
        let now: Int64 = 5_000_000_000
        #expect((0..<10).filter { _ in route.admit(source: "10.0.0.1", now: now) == nil }.count == 3)
        #expect((0..<10).filter { _ in route.admit(source: "10.0.0.2", now: now) == nil }.count == 3)
        #expect(route.admit(source: "10.0.0.1", now: now) == 1)  // retry-after one second
        #expect(!route.takeRetryMinimum(now: now))  // no minimum configured
    }

    @Test func endpointCountsAreConsecutiveAcrossLoops() {
        let e = SharedEndpointState()
        let bad = AttemptOutcome.response(status: 500, grpcStatus: nil)
        for i in 1...4 { #expect(e.count(bad).fiveXX == i) }
        #expect(e.count(.response(status: 200, grpcStatus: nil)) == (0, 0))
        #expect(e.count(bad).fiveXX == 1)
        #expect(e.claimEjection(until: 100, now: 10))
        #expect(!e.claimEjection(until: 120, now: 11))  // already ejected: the other loop loses
        #expect(e.consecutive5xx.load(ordering: .relaxed) == 0)
    }
}
