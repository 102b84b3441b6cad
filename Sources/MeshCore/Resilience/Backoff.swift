/// Exponential backoff with full jitter: attempt n waits a uniformly random time in
/// [0, min(max, base × 2^(n-1))] (AWS's "full jitter"; DESIGN: 25 ms base, 250 ms cap).
public struct Backoff: Sendable, Equatable {
    public var base: MeshDuration = .milliseconds(25)
    public var max: MeshDuration = .milliseconds(250)

    public init(base: MeshDuration = .milliseconds(25), max: MeshDuration = .milliseconds(250)) {
        self.base = base
        self.max = max
    }

    /// The delay before retry number `retry` (1 = the first retry).
    public func delay(retry: Int, using rng: inout SplitMix64) -> MeshDuration {
        let shift = Swift.min(Swift.max(retry - 1, 0), 30)
        let (scaled, overflow) = base.nanoseconds.multipliedReportingOverflow(by: Int64(1) << Int64(shift))
        let ceiling = overflow ? max.nanoseconds : Swift.min(scaled, max.nanoseconds)
        guard ceiling > 0 else { return MeshDuration(nanoseconds: 0) }
        return MeshDuration(nanoseconds: Int64.random(in: 0...ceiling, using: &rng))
    }
}
