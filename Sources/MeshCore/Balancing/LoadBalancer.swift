#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#elseif canImport(Darwin)
    import Darwin
#endif

/// What one event loop knows about one endpoint's load.
public struct EndpointLoad: Sendable, Equatable {
    /// Requests this loop has in flight to the endpoint.
    public var inFlight = 0
    /// Peak-EWMA of response latency in nanoseconds; nil until the first observation.
    public var ewmaNanos: Double?
    /// When `ewmaNanos` was last updated, or when the endpoint appeared (nanoseconds, caller's clock).
    public var stamp: Int64 = 0

    public init(stamp: Int64 = 0) { self.stamp = stamp }
}

/// The "concrete" step of a request: which endpoint of a service gets it.
///
/// One value per service per event loop (no shared state, no lock per request). The caller reports
/// each request's start and finish so load-aware algorithms see in-flight counts and latency. Every
/// algorithm honours endpoint weights and the `eligible` set (healthy endpoints, narrowed by the
/// locality preference while enough local endpoints are healthy). Time is passed in (nanoseconds)
/// and randomness comes from the caller's generator, so tests are deterministic.
public struct LoadBalancer: Sendable {
    public let config: BalancerConfig
    public private(set) var endpoints: [EndpointConfig]
    public private(set) var loads: [EndpointLoad]
    /// Endpoints that may be picked now.
    public private(set) var eligible: [Bool]
    /// Endpoints not ejected (set by outlier detection).
    public private(set) var healthy: [Bool]
    /// Whether the locality preference is in force (enough healthy local endpoints).
    public private(set) var preferringLocal = false

    private let isLocal: [Bool]
    private let locality: LocalityPreference?
    private let seed: UInt64
    /// Eligible endpoint indexes and their weights (the domain of rr / random / P2C).
    private var candidates: [Int] = []
    private var cumulative: [Int] = []
    private var rr = RoundRobin(weights: [], seed: 0)
    private var ring: [(point: UInt64, endpoint: Int32)] = []
    private var maglev: [Int32] = []

    public init(
        config: BalancerConfig, endpoints: [EndpointConfig], seed: UInt64,
        selfLocality: SelfLocality = SelfLocality(), locality: LocalityPreference? = nil, now: Int64 = 0
    ) {
        self.config = config
        self.endpoints = endpoints
        self.loads = Array(repeating: EndpointLoad(stamp: now), count: endpoints.count)
        self.healthy = Array(repeating: true, count: endpoints.count)
        self.eligible = Array(repeating: true, count: endpoints.count)
        self.locality = locality
        self.seed = seed
        self.isLocal = endpoints.map { e in
            switch locality?.prefer {
            case .node?: return selfLocality.node != nil && e.node == selfLocality.node
            case .zone?: return selfLocality.zone != nil && e.zone == selfLocality.zone
            case nil: return false
            }
        }
        recomputeEligibility()
    }

    /// Keeps the load state of endpoints that are in both sets (matched by address) — a discovery
    /// update must not reset latency knowledge or in-flight counts.
    public mutating func carryLoads(from old: LoadBalancer) {
        var byAddress: [EndpointConfig: Int] = [:]
        for (i, e) in old.endpoints.enumerated() { byAddress[e] = i }
        for (i, e) in endpoints.enumerated() {
            if let j = byAddress[e] {
                loads[i] = old.loads[j]
                healthy[i] = old.healthy[j]
            }
        }
        recomputeEligibility()
    }

    // MARK: - Health and locality

    /// Marks an endpoint healthy or not (outlier ejection).
    public mutating func setHealthy(_ i: Int, _ value: Bool) {
        guard healthy.indices.contains(i), healthy[i] != value else { return }
        healthy[i] = value
        recomputeEligibility()
    }

    private mutating func recomputeEligibility() {
        let n = endpoints.count
        var usable = healthy
        if !usable.contains(true) {
            // Nothing healthy: better to try everything than to fail every request (Envoy's panic mode).
            usable = Array(repeating: true, count: n)
        }
        preferringLocal = false
        if let locality {
            let local = (0..<n).filter { isLocal[$0] }
            let healthyLocal = local.filter { usable[$0] }.count
            if !local.isEmpty && healthyLocal > 0 && Double(healthyLocal) / Double(local.count) >= locality.minHealthyShare {
                preferringLocal = true
                for i in 0..<n where !isLocal[i] { usable[i] = false }
            }
        }
        eligible = usable
        candidates = (0..<n).filter { eligible[$0] && endpoints[$0].weight > 0 }
        var running = 0
        cumulative = candidates.map { i in
            running += endpoints[i].weight
            return running
        }
        rr = RoundRobin(weights: candidates.map { endpoints[$0].weight }, seed: seed)
        switch config.algorithm {
        case .ringHash: buildRing()
        case .maglev: buildMaglev()
        default: break
        }
    }

    // MARK: - Picking

    /// The endpoint for the next request, or nil when the service has none. `hash` is the request's
    /// hash key for ring_hash / maglev (nil when the request has no key: a weighted random pick).
    public mutating func pick(hash: UInt64? = nil, now: Int64, using rng: inout SplitMix64) -> Int? {
        if candidates.isEmpty { return nil }
        if candidates.count == 1 { return candidates[0] }
        switch config.algorithm {
        case .roundRobin:
            return rr.pick().map { candidates[$0] }
        case .random:
            return weightedRandom(&rng)
        case .leastRequest:
            return powerOfTwo(&rng) { i in Double(loads[i].inFlight + 1) / Double(endpoints[i].weight) }
        case .ewma:
            return powerOfTwo(&rng) { i in
                cost(i, now: now) * Double(loads[i].inFlight + 1) / Double(endpoints[i].weight)
            }
        case .ringHash:
            guard let hash else { return weightedRandom(&rng) }
            return ringLookup(hash)
        case .maglev:
            guard let hash, !maglev.isEmpty else { return weightedRandom(&rng) }
            return Int(maglev[Int(hash % UInt64(maglev.count))])
        }
    }

    /// A pick for a retry: the balancer's choice unless `avoid` rejects it (an endpoint the request
    /// already tried); after four rejected picks, a uniform choice among the candidates `avoid`
    /// accepts; when it accepts none (every candidate was tried), the balancer's choice.
    public mutating func pick(
        hash: UInt64? = nil, now: Int64, using rng: inout SplitMix64, avoiding avoid: (Int) -> Bool
    ) -> Int? {
        var choice: Int?
        for _ in 0..<4 {
            choice = pick(hash: hash, now: now, using: &rng)
            guard let c = choice else { return nil }
            if !avoid(c) { return c }
        }
        let fresh = candidates.filter { !avoid($0) }
        return fresh.isEmpty ? choice : fresh[Int.random(in: 0..<fresh.count, using: &rng)]
    }

    public mutating func requestStarted(_ i: Int) {
        loads[i].inFlight += 1
    }

    /// The latency a failed attempt (no response: connect failure, reset, timeout) counts as in the
    /// peak-EWMA. Without it a refusing endpoint — never observed, its estimate decaying toward zero —
    /// would look fastest and draw every request and retry.
    public static let failurePenaltyNanos: Int64 = 1_000_000_000

    /// A request finished; `latencyNanos` (time to the response head) feeds the peak-EWMA. Pass nil
    /// when there was no response (the in-flight count still drops); `failed`: the attempt failed
    /// without a response, which counts as `failurePenaltyNanos`.
    public mutating func requestFinished(_ i: Int, latencyNanos: Int64?, failed: Bool = false, now: Int64) {
        loads[i].inFlight = max(0, loads[i].inFlight - 1)
        guard let rtt = (latencyNanos ?? (failed ? Self.failurePenaltyNanos : nil)).map(Double.init) else { return }
        guard let current = loads[i].ewmaNanos else {
            loads[i].ewmaNanos = rtt
            loads[i].stamp = now
            return
        }
        if rtt > current {
            // Peak: a slow response raises the estimate at once.
            loads[i].ewmaNanos = rtt
        } else {
            let w = decayWeight(since: loads[i].stamp, now: now)
            loads[i].ewmaNanos = current * w + rtt * (1 - w)
        }
        loads[i].stamp = now
    }

    /// The peak-EWMA latency estimate of endpoint `i` now, in nanoseconds: the default RTT from the
    /// moment the endpoint appeared, then the observed estimate; either decays toward zero while the
    /// endpoint is not observed (so a new or once-slow endpoint gets probed, as tower/linkerd do).
    public func cost(_ i: Int, now: Int64) -> Double {
        let e = loads[i].ewmaNanos ?? Double(config.defaultRTT.nanoseconds)
        return e * decayWeight(since: loads[i].stamp, now: now)
    }

    private func decayWeight(since stamp: Int64, now: Int64) -> Double {
        let elapsed = Double(max(0, now - stamp))
        return exp(-elapsed / Double(max(1, config.decay.nanoseconds)))
    }

    private func weightedRandom(_ rng: inout SplitMix64) -> Int {
        let total = cumulative[cumulative.count - 1]
        let ticket = Int.random(in: 0..<total, using: &rng)
        // Binary search for the first cumulative weight above the ticket.
        var lo = 0
        var hi = cumulative.count - 1
        while lo < hi {
            let mid = (lo + hi) / 2
            if cumulative[mid] > ticket { hi = mid } else { lo = mid + 1 }
        }
        return candidates[lo]
    }

    /// Power of two choices: two distinct weighted-random candidates, the lower score wins.
    private func powerOfTwo(_ rng: inout SplitMix64, score: (Int) -> Double) -> Int {
        let a = weightedRandom(&rng)
        var b = weightedRandom(&rng)
        var tries = 0
        while b == a && tries < 4 {
            b = weightedRandom(&rng)
            tries += 1
        }
        if b == a { b = candidates[(candidates.firstIndex(of: a)! + 1) % candidates.count] }
        return score(b) < score(a) ? b : a
    }

    // MARK: - Ring hash

    private mutating func buildRing() {
        ring.removeAll()
        let total = candidates.reduce(0) { $0 + endpoints[$1].weight }
        guard total > 0 else { return }
        // A constant number of points per unit of weight: the ring for a given membership is the same
        // whatever came before, and other endpoints' points never move. Capped at 2^20 points.
        let perWeight = max(1, min(config.pointsPerWeight, (1 << 20) / total))
        for i in candidates {
            let name = endpoints[i].address.description
            let points = perWeight * endpoints[i].weight
            for p in 0..<points {
                ring.append((StableHash.hash("\(name)_\(p)"), Int32(i)))
            }
        }
        ring.sort { $0.point < $1.point }
    }

    private func ringLookup(_ hash: UInt64) -> Int? {
        guard !ring.isEmpty else { return nil }
        var lo = 0
        var hi = ring.count
        while lo < hi {
            let mid = (lo + hi) / 2
            if ring[mid].point < hash { lo = mid + 1 } else { hi = mid }
        }
        return Int(ring[lo == ring.count ? 0 : lo].endpoint)
    }

    // MARK: - Maglev

    private mutating func buildMaglev() {
        let m = config.tableSize
        guard !candidates.isEmpty, m > 0 else {
            maglev = []
            return
        }
        var table = [Int32](repeating: -1, count: m)
        let offsets = candidates.map { Int(StableHash.hash(endpoints[$0].address.description) % UInt64(m)) }
        let skips = candidates.map {
            Int(StableHash.mix(StableHash.hash(endpoints[$0].address.description) ^ 0x9e37_79b9) % UInt64(m - 1)) + 1
        }
        let weights = candidates.map { Double(endpoints[$0].weight) }
        let maxWeight = weights.max() ?? 1
        var next = [Int](repeating: 0, count: candidates.count)
        var counts = [Int](repeating: 0, count: candidates.count)
        var filled = 0
        var iteration = 0
        while filled < m {
            iteration += 1
            for k in 0..<candidates.count {
                // Weighted Maglev: an endpoint takes a turn while its count is behind its share.
                if Double(counts[k]) >= Double(iteration) * weights[k] / maxWeight { continue }
                var slot = (offsets[k] + next[k] * skips[k]) % m
                while table[slot] >= 0 {
                    next[k] += 1
                    slot = (offsets[k] + next[k] * skips[k]) % m
                }
                table[slot] = Int32(candidates[k])
                next[k] += 1
                counts[k] += 1
                filled += 1
                if filled == m { break }
            }
        }
        maglev = table
    }

    /// Maglev table entries per endpoint (for tests and `/services`).
    public var maglevShares: [Int] {
        var out = [Int](repeating: 0, count: endpoints.count)
        for e in maglev { out[Int(e)] += 1 }
        return out
    }
}
