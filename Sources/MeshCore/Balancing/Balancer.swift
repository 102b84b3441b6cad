/// The "concrete" step: which endpoint of a service gets the request.
///
/// A closed enum rather than an existential, so the hot path has no dynamic dispatch or boxing. Each
/// event loop owns its own balancer per service (no shared state, no lock per request).
public enum Balancer: Sendable {
    case roundRobin(RoundRobin)

    public init(kind: BalancerKind, endpoints: [EndpointConfig], seed: UInt64) {
        switch kind {
        case .roundRobin: self = .roundRobin(RoundRobin(endpoints: endpoints, seed: seed))
        }
    }

    /// The index of the chosen endpoint in the service's endpoint list, or nil if there is none.
    public mutating func pick() -> Int? {
        switch self {
        case .roundRobin(var rr):
            self = .roundRobin(RoundRobin(empty: ()))  // keep `rr` uniquely referenced while mutating
            let choice = rr.pick()
            self = .roundRobin(rr)
            return choice
        }
    }
}

/// Weighted round robin: each endpoint appears `weight` times per cycle, interleaved (smooth
/// weighted round robin as nginx does it), starting at a seeded offset so that event loops and
/// proxies do not all start on the same endpoint.
public struct RoundRobin: Sendable {
    private var weights: [Int]
    private var current: [Int]
    private var totalWeight: Int
    private var uniform: Bool
    private var next: Int

    public init(endpoints: [EndpointConfig], seed: UInt64) {
        self.weights = endpoints.map(\.weight)
        self.current = Array(repeating: 0, count: endpoints.count)
        self.totalWeight = weights.reduce(0, +)
        self.uniform = Set(weights).count <= 1
        self.next = endpoints.isEmpty ? 0 : Int(seed % UInt64(endpoints.count))
    }

    init(empty: Void) {
        weights = []
        current = []
        totalWeight = 0
        uniform = true
        next = 0
    }

    public mutating func pick() -> Int? {
        let n = weights.count
        if n == 0 { return nil }
        if uniform {
            let choice = next
            next = next + 1 == n ? 0 : next + 1
            return choice
        }
        var best = 0
        for i in 0..<n {
            current[i] += weights[i]
            if current[i] > current[best] { best = i }
        }
        current[best] -= totalWeight
        return best
    }
}
