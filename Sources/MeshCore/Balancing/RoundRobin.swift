/// Weighted round robin: each endpoint appears `weight` times per cycle, interleaved (smooth weighted
/// round robin, as nginx does it), starting at a seeded offset so that event loops and proxies do not
/// all start on the same endpoint.
public struct RoundRobin: Sendable {
    private var weights: [Int]
    private var current: [Int]
    private var totalWeight: Int
    private var uniform: Bool
    private var next: Int

    public init(weights: [Int], seed: UInt64) {
        self.weights = weights
        self.current = Array(repeating: 0, count: weights.count)
        self.totalWeight = weights.reduce(0, +)
        self.uniform = Set(weights).count <= 1
        self.next = weights.isEmpty ? 0 : Int(seed % UInt64(weights.count))
    }

    /// An index into `weights`, or nil when there is none.
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
