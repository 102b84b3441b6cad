/// The rapid-reset defence of a downstream HTTP/2 connection (CVE-2023-44487): counts streams the
/// client reset before meshd started any work on them — the RST_STREAM arrived in the same read as
/// the stream's HEADERS — and says when the connection must be closed.
///
/// A client cancelling calls for real (a deadline, a user leaving) resets streams meshd is already
/// working on, which never count here, so a gRPC client cancelling thousands of calls keeps its
/// connection; a flood of HEADERS + RST_STREAM pairs loses it after `limit` of them within `window`.
/// (A gRPC client does send HEADERS and RST_STREAM together for calls that expired while queued
/// behind the connection's stream limit, so the limit leaves room for a few hundred of those.)
public struct PrematureResetLimiter: Sendable, Equatable {
    public let limit: Int
    public let windowNanos: Int64
    private var windowStart: Int64 = .min
    private var count = 0

    public init(limit: Int, window: MeshDuration = .seconds(1)) {
        self.limit = limit
        self.windowNanos = window.nanoseconds
    }

    /// One premature reset at `now` (monotonic nanoseconds). True when the connection is over its limit.
    public mutating func record(now: Int64) -> Bool {
        if windowStart == .min || now - windowStart >= windowNanos {
            windowStart = now
            count = 0
        }
        count += 1
        return count > limit
    }
}
