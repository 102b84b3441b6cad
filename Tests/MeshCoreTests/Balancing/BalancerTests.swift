import Testing

@testable import MeshCore

@Suite("Load balancers")
struct BalancerTests {
    static func endpoints(_ weights: [Int], zones: [String?]? = nil) -> [EndpointConfig] {
        weights.enumerated().map { i, w in
            EndpointConfig(address: HostPort(host: "10.0.0.\(i + 1)", port: 80), weight: w, zone: zones?[i])
        }
    }

    static func balancer(_ kind: BalancerKind, _ weights: [Int], seed: UInt64 = 0) -> LoadBalancer {
        LoadBalancer(config: BalancerConfig(algorithm: kind), endpoints: endpoints(weights), seed: seed)
    }

    /// Picks `n` times (each request finishes at once) and counts per endpoint.
    static func counts(_ b: inout LoadBalancer, _ n: Int, seed: UInt64 = 1, hash: ((Int) -> UInt64)? = nil) -> [Int] {
        var rng = SplitMix64(seed: seed)
        var c = [Int](repeating: 0, count: b.endpoints.count)
        for k in 0..<n {
            let i = b.pick(hash: hash?(k), now: 0, using: &rng)!
            c[i] += 1
        }
        return c
    }

    // MARK: round robin

    @Test func roundRobinIsExact() {
        var b = Self.balancer(.roundRobin, [1, 1, 1])
        var rng = SplitMix64(seed: 0)
        let first = (0..<6).map { _ in b.pick(now: 0, using: &rng)! }
        #expect(first == [0, 1, 2, 0, 1, 2])
        #expect(Self.counts(&b, 300) == [100, 100, 100])
    }

    @Test func weightedRoundRobinIsSmoothAndExact() {
        var b = Self.balancer(.roundRobin, [5, 1, 1])
        var rng = SplitMix64(seed: 0)
        let cycle = (0..<7).map { _ in b.pick(now: 0, using: &rng)! }
        #expect(cycle == [0, 0, 1, 0, 2, 0, 0])
        #expect(Self.counts(&b, 700) == [500, 100, 100])
    }

    @Test func emptyServiceHasNoPickForEveryAlgorithm() {
        for kind in BalancerKind.allCases {
            var b = Self.balancer(kind, [])
            var rng = SplitMix64(seed: 0)
            #expect(b.pick(hash: 42, now: 0, using: &rng) == nil, "\(kind)")
        }
    }

    // MARK: random

    @Test func weightedRandomWithinStatisticalBounds() {
        var b = Self.balancer(.random, [1, 2, 7])
        let n = 100_000
        let c = Self.counts(&b, n)
        // σ of a share p over n picks is sqrt(p(1-p)/n) ≤ 0.0016; ±1 % is over 6σ.
        for (i, expected) in [0.1, 0.2, 0.7].enumerated() {
            #expect(abs(Double(c[i]) / Double(n) - expected) < 0.01, "\(c)")
        }
    }

    // MARK: least request (P2C)

    @Test func leastRequestAvoidsTheBusyEndpoint() {
        var b = Self.balancer(.leastRequest, [1, 1, 1])
        for _ in 0..<10 { b.requestStarted(0) }  // endpoint 0 has 10 requests in flight
        let c = Self.counts(&b, 30_000)
        // Endpoint 0 wins only when both choices land on it — never, since the choices are distinct.
        #expect(c[0] == 0, "\(c)")
        #expect(abs(c[1] - c[2]) < 900, "\(c)")
    }

    @Test func leastRequestSpreadsEvenlyWhenIdleAndHonoursWeights() {
        var b = Self.balancer(.leastRequest, [1, 1, 2])
        let n = 60_000
        let c = Self.counts(&b, n)
        // With no load the score is 1/weight: the heavy endpoint wins every pair it is in.
        #expect(c[2] > c[0] + c[1], "\(c)")
        #expect(abs(c[0] - c[1]) < n / 50, "\(c)")
    }

    // MARK: peak EWMA (P2C)

    @Test func ewmaShiftsLoadAwayFromASlowEndpoint() {
        var b = Self.balancer(.ewma, [1, 1, 1])
        var rng = SplitMix64(seed: 7)
        let latency: [Int64] = [1_000_000, 1_000_000, 21_000_000]  // the third answers 20 ms slower
        var now: Int64 = 0
        var c = [0, 0, 0]
        // Closed loop with 8 requests in flight, simulated time: each finishes after its latency.
        var inflight: [(end: Int64, endpoint: Int)] = []
        var picks = 0
        while picks < 20_000 {
            while inflight.count < 8 {
                let i = b.pick(now: now, using: &rng)!
                b.requestStarted(i)
                inflight.append((now + latency[i], i))
                c[i] += 1
                picks += 1
            }
            inflight.sort { $0.end < $1.end }
            let done = inflight.removeFirst()
            now = done.end
            b.requestFinished(done.endpoint, latencyNanos: latency[done.endpoint], now: now)
        }
        let slowShare = Double(c[2]) / Double(picks)
        #expect(slowShare < 0.10, "slow endpoint got \(slowShare * 100) % (\(c))")
        #expect(abs(c[0] - c[1]) < picks / 10, "\(c)")
    }

    @Test func ewmaAvoidsEndpointsThatFailWithoutAResponse() {
        // One healthy endpoint (1 ms) and two that refuse connections (fail at once, no response):
        // failures count as `failurePenaltyNanos`, so the refusing ones do not look fastest.
        var b = Self.balancer(.ewma, [1, 1, 1])
        var rng = SplitMix64(seed: 11)
        var now: Int64 = 0
        var c = [0, 0, 0]
        for _ in 0..<3000 {
            let i = b.pick(now: now, using: &rng)!
            b.requestStarted(i)
            c[i] += 1
            now += 1_000_000
            if i == 0 {
                b.requestFinished(i, latencyNanos: 1_000_000, now: now)
            } else {
                b.requestFinished(i, latencyNanos: nil, failed: true, now: now)
            }
        }
        // Power of two choices: a pick of the two failing ones (1 in 3) must take one of them; every
        // other pick goes to the healthy endpoint (before the penalty the failing ones looked fastest).
        #expect(Double(c[0]) / 3000 > 0.6 && c[1] < 600 && c[2] < 600, "the healthy endpoint got only \(c)")
    }

    @Test(arguments: [BalancerKind.random, .leastRequest, .ewma, .roundRobin])
    func aRetryPickAvoidsTriedEndpoints(algorithm: BalancerKind) {
        var b = Self.balancer(algorithm, [1, 1, 1])
        var rng = SplitMix64(seed: 3)
        for n in 0..<500 {
            let tried: Set<Int> = n % 2 == 0 ? [0, 1] : [1, 2]
            let pick = b.pick(now: 0, using: &rng) { tried.contains($0) }
            #expect(pick == (n % 2 == 0 ? 2 : 0))
        }
        // Everything tried: the balancer's own choice.
        #expect(b.pick(now: 0, using: &rng) { _ in true } != nil)
    }

    @Test func ewmaIsPeakSensitiveAndDecays() {
        var b = Self.balancer(.ewma, [1, 1])
        #expect(b.cost(0, now: 0) == 30_000_000)  // default RTT before any observation
        b.requestStarted(0)
        b.requestFinished(0, latencyNanos: 5_000_000, now: 1_000_000_000)
        #expect(b.cost(0, now: 1_000_000_000) == 5_000_000)
        b.requestStarted(0)
        b.requestFinished(0, latencyNanos: 50_000_000, now: 1_100_000_000)
        #expect(b.cost(0, now: 1_100_000_000) == 50_000_000)  // a peak is taken at once
        b.requestStarted(0)
        b.requestFinished(0, latencyNanos: 1_000_000, now: 1_200_000_000)
        let afterFast = b.cost(0, now: 1_200_000_000)
        #expect(afterFast < 50_000_000 && afterFast > 40_000_000)  // a fast one only pulls it down slowly
        // Unobserved for one decay period (10 s): e^-1 of the estimate.
        let later = b.cost(0, now: 11_200_000_000)
        #expect(abs(later / afterFast - 0.3679) < 0.001)
        #expect(b.loads[0].inFlight == 0)
    }

    // MARK: consistent hashing

    static func keys(_ n: Int) -> [UInt64] { (0..<n).map { StableHash.hash("user-\($0)") } }

    static func owners(_ kind: BalancerKind, _ eps: [EndpointConfig], _ keys: [UInt64]) -> [String] {
        var b = LoadBalancer(config: BalancerConfig(algorithm: kind), endpoints: eps, seed: 0)
        var rng = SplitMix64(seed: 0)
        return keys.map { b.endpoints[b.pick(hash: $0, now: 0, using: &rng)!].address.description }
    }

    @Test(arguments: [BalancerKind.ringHash, .maglev])
    func consistentHashingKeepsKeysWhenOneOfTenEndpointsLeaves(kind: BalancerKind) {
        let all = Self.endpoints(Array(repeating: 1, count: 10))
        let keys = Self.keys(20_000)
        let before = Self.owners(kind, all, keys)
        let removed = all[3].address.description
        let after = Self.owners(kind, all.filter { $0.address.description != removed }, keys)
        var stayed = 0
        var eligible = 0
        for (b, a) in zip(before, after) where b != removed {
            eligible += 1
            if a == b { stayed += 1 }
        }
        let share = Double(stayed) / Double(eligible)
        #expect(share >= 0.95, "\(kind): only \(share * 100) % of keys kept their endpoint")
        #expect(!after.contains(removed))
    }

    @Test(arguments: [BalancerKind.ringHash, .maglev], [4, 5, 9, 16])
    func consistentHashingIsStableForEveryMembershipSize(kind: BalancerKind, n: Int) {
        // Removing one of n endpoints: keys of the others stay (4 → 3 once moved a third of them).
        let all = Self.endpoints(Array(repeating: 1, count: n))
        let keys = Self.keys(10_000)
        let before = Self.owners(kind, all, keys)
        let removed = all[1].address.description
        let after = Self.owners(kind, all.filter { $0.address.description != removed }, keys)
        let kept = zip(before, after).filter { $0.0 != removed }
        let share = Double(kept.filter { $0.0 == $0.1 }.count) / Double(kept.count)
        #expect(share >= 0.95, "\(kind) with \(n) endpoints kept only \(share)")
    }

    @Test func newEndpointsDefaultRTTDecaysSoTheyGetProbed() {
        let b = LoadBalancer(config: BalancerConfig(algorithm: .ewma), endpoints: Self.endpoints([1]), seed: 0, now: 0)
        #expect(b.cost(0, now: 0) == 30_000_000)
        #expect(abs(b.cost(0, now: 10_000_000_000) / 30_000_000 - 0.3679) < 0.001)
    }

    @Test func maglevSpreadsWithinOnePercentOfEven() {
        var b = Self.balancer(.maglev, Array(repeating: 1, count: 10))
        let shares = b.maglevShares
        #expect(shares.reduce(0, +) == 65537)
        let even = 65537.0 / 10
        for s in shares { #expect(abs(Double(s) - even) / even < 0.01, "\(shares)") }
        // And requests with random keys follow the table.
        let n = 1_000_000
        let c = Self.counts(&b, n, hash: { StableHash.mix(UInt64($0)) })
        for x in c { #expect(abs(Double(x) - Double(n) / 10) / (Double(n) / 10) < 0.01, "\(c)") }
    }

    @Test func hashingHonoursWeights() {
        var maglev = Self.balancer(.maglev, [1, 3])
        let shares = maglev.maglevShares
        #expect(abs(Double(shares[1]) / 65537 - 0.75) < 0.01, "\(shares)")
        var ring = Self.balancer(.ringHash, [1, 3])
        let c = Self.counts(&ring, 100_000, hash: { StableHash.mix(UInt64($0)) })
        #expect(abs(Double(c[1]) / 100_000 - 0.75) < 0.05, "\(c)")
        _ = Self.counts(&maglev, 1)
    }

    @Test func hashWithoutAKeyFallsBackToWeightedRandom() {
        var b = Self.balancer(.ringHash, [1, 1])
        let c = Self.counts(&b, 10_000)
        #expect(c[0] > 4_000 && c[1] > 4_000, "\(c)")
    }

    @Test func sameKeySameEndpointAcrossInstances() {
        let eps = Self.endpoints([1, 1, 1, 1])
        let k = Self.keys(100)
        #expect(Self.owners(.maglev, eps, k) == Self.owners(.maglev, eps, k))
        #expect(Self.owners(.ringHash, eps, k) == Self.owners(.ringHash, eps, k))
    }

    // MARK: health, locality, updates

    @Test func unhealthyEndpointsAreSkippedByEveryAlgorithm() {
        for kind in BalancerKind.allCases {
            var b = Self.balancer(kind, [1, 1, 1])
            b.setHealthy(1, false)
            let c = Self.counts(&b, 3_000, hash: { StableHash.mix(UInt64($0)) })
            #expect(c[1] == 0, "\(kind): \(c)")
            #expect(c[0] > 0 && c[2] > 0, "\(kind): \(c)")
        }
    }

    @Test func nothingHealthyMeansTryEverything() {
        var b = Self.balancer(.roundRobin, [1, 1])
        b.setHealthy(0, false)
        b.setHealthy(1, false)
        #expect(Self.counts(&b, 10) == [5, 5])
    }

    @Test func localityPrefersTheLocalZoneAndFallsBack() {
        let eps = Self.endpoints([1, 1, 1, 1], zones: ["a", "a", "b", "b"])
        var b = LoadBalancer(
            config: BalancerConfig(algorithm: .roundRobin), endpoints: eps, seed: 0,
            selfLocality: SelfLocality(zone: "a"), locality: LocalityPreference(prefer: .zone, minHealthyShare: 0.6))
        #expect(b.preferringLocal)
        #expect(Self.counts(&b, 100) == [50, 50, 0, 0])
        // One of the two local endpoints down: 50 % healthy < 60 % → everything healthy is used.
        b.setHealthy(0, false)
        #expect(!b.preferringLocal)
        let c = Self.counts(&b, 90)
        #expect(c == [0, 30, 30, 30], "\(c)")
        b.setHealthy(0, true)
        #expect(b.preferringLocal)
    }

    @Test func updatesKeepLoadStateOfSurvivingEndpoints() {
        var old = Self.balancer(.ewma, [1, 1, 1])
        old.requestStarted(1)
        old.requestFinished(1, latencyNanos: 7_000_000, now: 0)
        old.requestStarted(2)
        old.setHealthy(0, false)
        var new = LoadBalancer(
            config: BalancerConfig(algorithm: .ewma), endpoints: Array(Self.endpoints([1, 1, 1, 1])[1...]), seed: 0)
        new.carryLoads(from: old)
        #expect(new.loads[0].ewmaNanos == 7_000_000)
        #expect(new.loads[1].inFlight == 1)
        #expect(new.loads[2] == EndpointLoad())
        #expect(new.healthy == [true, true, true])
    }
}
