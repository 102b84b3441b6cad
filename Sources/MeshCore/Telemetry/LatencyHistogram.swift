/// A fixed-bucket latency histogram owned by one event loop (no locks, no atomics); loops' copies are
/// merged when `/metrics` is scraped. Bucket bounds follow the usual Prometheus latency ladder, from 100 µs (a
/// proxy hop on one machine) to 30 s.
public struct LatencyHistogram: Sendable, Equatable {
    /// Upper bounds in seconds.
    public static let bounds: [Double] = [
        0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30,
    ]
    static let boundsNanos: [Int64] = bounds.map { Int64($0 * 1e9) }

    /// counts[i] = observations <= bounds[i] and > bounds[i-1]; the last slot is +Inf.
    public private(set) var counts: [UInt64] = Array(repeating: 0, count: LatencyHistogram.bounds.count + 1)
    public private(set) var sumNanos: Int64 = 0
    public private(set) var count: UInt64 = 0

    public init() {}

    public mutating func record(nanoseconds: Int64) {
        let n = max(nanoseconds, 0)
        var i = 0
        let b = Self.boundsNanos
        while i < b.count && n > b[i] { i += 1 }
        counts[i] &+= 1
        sumNanos &+= n
        count &+= 1
    }

    public mutating func merge(_ other: LatencyHistogram) {
        for i in counts.indices { counts[i] &+= other.counts[i] }
        sumNanos &+= other.sumNanos
        count &+= other.count
    }

    /// Cumulative counts per bound, as Prometheus exposes them.
    public var cumulative: [UInt64] {
        var out: [UInt64] = []
        out.reserveCapacity(counts.count)
        var running: UInt64 = 0
        for c in counts {
            running &+= c
            out.append(running)
        }
        return out
    }

    /// An estimate of the q-quantile (0...1) by linear interpolation inside the bucket.
    public func quantile(_ q: Double) -> Double? {
        guard count > 0 else { return nil }
        let rank = q * Double(count)
        var running: Double = 0
        for (i, c) in counts.enumerated() {
            let next = running + Double(c)
            if next >= rank && c > 0 {
                let lower = i == 0 ? 0 : Self.bounds[i - 1]
                let upper = i < Self.bounds.count ? Self.bounds[i] : Self.bounds[Self.bounds.count - 1]
                return lower + (upper - lower) * ((rank - running) / Double(c))
            }
            running = next
        }
        return Self.bounds.last
    }
}
