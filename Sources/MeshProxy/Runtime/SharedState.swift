import Atomics
import CoreMetrics
import Dispatch
import MeshCore

/// What every event loop shares about one route: its rate limit and the minimum of its retry budget,
/// each a GCRA whose whole state is one atomic integer (see `GCRA`), so the configured numbers hold
/// for the proxy as a whole — whatever the number of event loops and however connections spread over
/// them — with one compare-and-swap per request and no lock.
///
/// Per-source limits (node mode, or `perSource: true`) keep one GCRA per source address in a fixed
/// table of `SourceSlots.capacity` slots (claimed by compare-and-swap, reclaimed once a source's
/// bucket has refilled); sources past it share one overflow bucket.
final class SharedRouteState: Sendable {
    let name: String
    let rateLimit: GCRA?
    let perSource: Bool
    private let tat = ManagedAtomic<Int64>(0)
    private let sources: SourceSlots?
    /// The retry budget's `minPerSecond`, as a bucket of one second's worth.
    let retryMinimum: GCRA?
    private let retryTAT = ManagedAtomic<Int64>(0)
    /// The policy this state was made for (kept across reloads while unchanged).
    let policy: RouteConfigKey
    /// Requests by status class and gRPC status (kept across reloads while the route's name stays).
    let metrics: RouteMetrics

    struct RouteConfigKey: Equatable, Sendable {
        var rateLimit: RateLimitConfig?
        var perSource: Bool
        var retryMinimum: Double
    }

    init(name: String, rateLimit: RateLimitConfig?, perSource: Bool, retryMinimumPerSecond: Double, metrics: RouteMetrics? = nil) {
        self.name = name
        self.metrics = metrics ?? RouteMetrics(name: name)
        self.policy = RouteConfigKey(rateLimit: rateLimit, perSource: perSource, retryMinimum: retryMinimumPerSecond)
        self.rateLimit = rateLimit.map { GCRA(ratePerSecond: $0.requestsPerSecond, burst: $0.burst) }
        self.perSource = perSource
        self.sources = rateLimit != nil && perSource ? SourceSlots() : nil
        self.retryMinimum =
            retryMinimumPerSecond > 0 ? GCRA(ratePerSecond: retryMinimumPerSecond, burst: max(1, retryMinimumPerSecond)) : nil
    }

    /// nil when a request from `source` may go now, else whole seconds until one may (`retry-after`).
    func admit(source: String, now: Int64) -> Int? {
        guard let limit = rateLimit else { return nil }
        let cell: ManagedAtomic<Int64>
        if let sources {
            cell = sources.cell(for: StableHash.hash(source), limit: limit, now: now)
        } else {
            cell = tat
        }
        return Self.take(limit, cell, now: now).map(GCRA.retryAfterSeconds)
    }

    /// One retry from the budget's per-second minimum, if there is one left.
    func takeRetryMinimum(now: Int64) -> Bool {
        guard let retryMinimum else { return false }
        return Self.take(retryMinimum, retryTAT, now: now) == nil
    }

    /// nil when admitted (the TAT moved on), else nanoseconds until admission.
    static func take(_ gcra: GCRA, _ cell: ManagedAtomic<Int64>, now: Int64) -> Int64? {
        var tat = cell.load(ordering: .relaxed)
        while true {
            switch gcra.decide(tat: tat, now: now) {
            case .reject(let after):
                return after
            case .admit(let newTAT):
                let (exchanged, original) = cell.compareExchange(expected: tat, desired: newTAT, ordering: .relaxed)
                if exchanged { return nil }
                tat = original
            }
        }
    }
}

/// A fixed open-addressed table of per-source GCRA cells shared by all loops.
final class SourceSlots: Sendable {
    static let capacity = 4096
    static let probes = 8
    private let keys: [ManagedAtomic<UInt64>]
    private let tats: [ManagedAtomic<Int64>]
    private let overflow = ManagedAtomic<Int64>(0)

    init() {
        keys = (0..<Self.capacity).map { _ in ManagedAtomic<UInt64>(0) }
        tats = (0..<Self.capacity).map { _ in ManagedAtomic<Int64>(0) }
    }

    /// The cell of the source whose hash is `hash`: its own slot, a free one, or one whose bucket has
    /// refilled (its source has been quiet long enough to be forgotten); else the shared overflow.
    func cell(for hash: UInt64, limit: GCRA, now: Int64) -> ManagedAtomic<Int64> {
        let key = hash | 1
        let start = Int(truncatingIfNeeded: hash >> 1) & (Self.capacity - 1)
        for probe in 0..<Self.probes {
            let i = (start + probe) & (Self.capacity - 1)
            let k = keys[i].load(ordering: .relaxed)
            if k == key { return tats[i] }
            let stale = tats[i].load(ordering: .relaxed) + limit.tolerance <= now
            if k == 0 || stale {
                let (won, current) = keys[i].compareExchange(expected: k, desired: key, ordering: .relaxed)
                if won {
                    tats[i].store(0, ordering: .relaxed)
                    return tats[i]
                }
                if current == key { return tats[i] }
            }
        }
        return overflow
    }
}

/// What every event loop shares about one endpoint of a service: the outlier detector's consecutive
/// failure counts (so `consecutive5xx: 5` means five failures in a row of that endpoint, whichever loop
/// saw them — Envoy's semantics) and the end of its current ejection (which one loop claims).
final class SharedEndpointState: Sendable {
    let consecutive5xx = ManagedAtomic<Int>(0)
    let consecutiveGateway = ManagedAtomic<Int>(0)
    /// Uptime nanoseconds when the current ejection ends (0: never ejected).
    let ejectedUntil = ManagedAtomic<Int64>(0)

    /// Counts one outcome; returns the consecutive counts after it.
    func count(_ outcome: AttemptOutcome) -> (fiveXX: Int, gateway: Int) {
        let failure = outcome.isFailure
        guard failure.fiveXX || failure.gateway else {
            if consecutive5xx.load(ordering: .relaxed) != 0 { consecutive5xx.store(0, ordering: .relaxed) }
            if consecutiveGateway.load(ordering: .relaxed) != 0 { consecutiveGateway.store(0, ordering: .relaxed) }
            return (0, 0)
        }
        let f = failure.fiveXX ? consecutive5xx.wrappingIncrementThenLoad(ordering: .relaxed) : consecutive5xx.load(ordering: .relaxed)
        let g =
            failure.gateway ? consecutiveGateway.wrappingIncrementThenLoad(ordering: .relaxed) : consecutiveGateway.load(ordering: .relaxed)
        return (f, g)
    }

    /// Claims the ejection decided at `now` (one loop wins when several trip at once); resets counts.
    func claimEjection(until: Int64, now: Int64) -> Bool {
        let current = ejectedUntil.load(ordering: .relaxed)
        guard current <= now else { return false }
        let (won, _) = ejectedUntil.compareExchange(expected: current, desired: until, ordering: .relaxed)
        guard won else { return false }
        consecutive5xx.store(0, ordering: .relaxed)
        consecutiveGateway.store(0, ordering: .relaxed)
        return true
    }
}

/// What every event loop shares about one service, made once per service on the control side when a
/// snapshot is built (never on an event loop, never per request) and kept across reloads by name: its
/// circuit-breaker counters, its metric handles and its endpoints' shared outlier state.
final class SharedServiceState: Sendable {
    let name: String
    let counters: ServiceCounters
    let metrics: ServiceMetrics
    /// By endpoint address (`EndpointConfig.address`).
    let endpoints: [String: SharedEndpointState]

    init(name: String, addresses: [String], previous: SharedServiceState?) {
        self.name = name
        self.counters = previous?.counters ?? ServiceCounters()
        self.metrics = previous?.metrics ?? ServiceMetrics(name: name, direction: .outbound)
        var endpoints: [String: SharedEndpointState] = [:]
        for a in addresses { endpoints[a] = previous?.endpoints[a] ?? SharedEndpointState() }
        self.endpoints = endpoints
    }
}

/// Keeps a kind of per-event log line (a refused connection, a malformed request, a failed connect)
/// to at most 10 a second with bursts of 20, whatever a flood sends: the metrics count every event,
/// the log says how many lines it left out since the last one. One atomic compare-and-swap a line.
final class LogLimiter: Sendable {
    private let gcra = GCRA(ratePerSecond: 10, burst: 20)
    private let tat = ManagedAtomic<Int64>(0)
    private let suppressed = ManagedAtomic<Int>(0)

    /// nil: leave this line out (counted); else how many were left out before it.
    func admit(now: Int64 = Int64(DispatchTime.now().uptimeNanoseconds)) -> Int? {
        guard SharedRouteState.take(gcra, tat, now: now) == nil else {
            suppressed.wrappingIncrement(ordering: .relaxed)
            return nil
        }
        return suppressed.exchange(0, ordering: .relaxed)
    }
}
