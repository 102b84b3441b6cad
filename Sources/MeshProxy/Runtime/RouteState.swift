import CoreMetrics
import Logging
import MeshCore
import NIOCore
import NIOHTTP1

/// A route as one event loop sees it: its retry policy, the ratio part of its retry budget (this
/// loop's requests and retries: the ratio holds for the sum), and the state every loop shares —
/// the rate limit and the budget's per-second minimum (`SharedRouteState`).
final class RouteState {
    let name: String
    let retry: RetryPolicy
    let rateLimit: RateLimitConfig?
    let shared: SharedRouteState
    var budget: RetryBudget
    /// Whether requests must be kept for replay: retries on a response outcome are possible.
    let keepsReplay: Bool
    /// This loop's latencies of the route's requests (merged over loops by `/metrics`).
    var latency = LatencyHistogram()

    init(name: String, retry: RetryPolicy, rateLimit: RateLimitConfig?, shared: SharedRouteState, now: Int64) {
        self.name = name
        self.retry = retry
        self.rateLimit = rateLimit
        self.shared = shared
        var ratioOnly = retry.budget
        ratioOnly.minPerSecond = 0
        self.budget = RetryBudget(config: ratioOnly, now: now)
        self.keepsReplay = retry.needsReplay
    }

    /// nil when a request from `source` is allowed, else seconds to wait (`retry-after`).
    func admit(source: String, now: Int64) -> Int? {
        rateLimit == nil ? nil : shared.admit(source: source, now: now)
    }

    /// Whether a retry may be sent now (counted if so): within the ratio of this loop's requests, or
    /// from the per-second minimum shared by every loop.
    func tryRetry(now: Int64) -> Bool {
        budget.tryRetry(now: now) || shared.takeRetryMinimum(now: now)
    }
}

/// What one loop reports to the admin API (collected from every loop on request).
struct LoopReport: Sendable {
    struct Endpoint: Sendable {
        var address: String
        var inFlight: Int
        var requests: UInt64
        /// Peak-EWMA latency now, when observed.
        var ewmaNanos: Double?
        var eligible: Bool
        var healthy: Bool
        /// Uptime nanoseconds when an ejection ends.
        var ejectedUntil: Int64?
    }
    struct Service: Sendable {
        var name: String
        var latency: LatencyHistogram
        var endpoints: [Endpoint]
    }
    var version: Int
    var services: [Service]
    /// Per route (outbound): name and this loop's latencies.
    var routes: [(name: String, latency: LatencyHistogram)] = []
    /// Node mode: requests per source pod, and in all (see `LoopContext.countSource`).
    var sourceCounts: [String: UInt64] = [:]
    var sourceTotal: UInt64 = 0
    var inboundLatency: LatencyHistogram
    var upstreamIdle: Int
}
