/// A rate limit as the generic cell rate algorithm: the whole state is one number, the theoretical
/// arrival time (TAT) of the next request, so a limit shared by every event loop is one atomic
/// integer updated by compare-and-swap — no lock, and exact for the proxy as a whole. Equivalent to
/// a token bucket of `burst` tokens refilled at `ratePerSecond`. Time in nanoseconds.
public struct GCRA: Sendable, Equatable {
    /// Nanoseconds per request at the configured rate.
    public let interval: Int64
    /// How far ahead of `now` the TAT may run: `(burst - 1) × interval`.
    public let tolerance: Int64

    public init(ratePerSecond: Double, burst: Double) {
        let rate = max(ratePerSecond, 1e-9)
        let interval = min(Double(Int64.max / 4), (1e9 / rate).rounded(.up))
        self.interval = max(1, Int64(interval))
        let extra = max(burst.rounded(.down), 1) - 1
        self.tolerance = Int64(min(Double(Int64.max / 4), extra * Double(self.interval)))
    }

    public enum Decision: Sendable, Equatable {
        /// Admitted: store `newTAT`.
        case admit(newTAT: Int64)
        /// Refused: a request would be admitted again in `retryAfterNanos`.
        case reject(retryAfterNanos: Int64)
    }

    /// The decision for one request at `now`, given the stored TAT (0 for a new limit).
    public func decide(tat: Int64, now: Int64) -> Decision {
        let start = max(tat, now)
        if start - now > tolerance { return .reject(retryAfterNanos: start - now - tolerance) }
        return .admit(newTAT: start + interval)
    }

    /// Whole seconds for `retry-after`, at least 1.
    public static func retryAfterSeconds(_ nanos: Int64) -> Int {
        max(1, Int((Double(nanos) / 1e9).rounded(.up)))
    }
}
