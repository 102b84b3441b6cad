/// Retries allowed while they stay under `ratio` of requests plus `minPerSecond` per second, over a
/// sliding `window` (linkerd's retry budget; DESIGN: 20 % plus 10/s over 10 s). A retry storm against
/// a failing service is impossible: past the budget, retries are not sent.
///
/// Time is in nanoseconds on the caller's clock; the window is kept as 10 buckets.
public struct RetryBudget: Sendable {
    public struct Config: Sendable, Equatable {
        public var ratio = 0.2
        public var minPerSecond = 10.0
        public var window: MeshDuration = .seconds(10)
        public init(ratio: Double = 0.2, minPerSecond: Double = 10, window: MeshDuration = .seconds(10)) {
            self.ratio = ratio
            self.minPerSecond = minPerSecond
            self.window = window
        }
    }

    public let config: Config
    private var requests: [Int]
    private var retries: [Int]
    private var bucketStart: Int64
    private var current = 0
    private let bucketNanos: Int64
    static let buckets = 10

    public init(config: Config, now: Int64) {
        self.config = config
        self.requests = Array(repeating: 0, count: Self.buckets)
        self.retries = Array(repeating: 0, count: Self.buckets)
        self.bucketNanos = max(1, config.window.nanoseconds / Int64(Self.buckets))
        self.bucketStart = now
    }

    private mutating func advance(to now: Int64) {
        var steps = 0
        while now - bucketStart >= bucketNanos && steps <= Self.buckets {
            bucketStart += bucketNanos
            current = (current + 1) % Self.buckets
            requests[current] = 0
            retries[current] = 0
            steps += 1
        }
        if now - bucketStart >= bucketNanos {
            // Idle for more than a window: start afresh.
            bucketStart = now
        }
    }

    /// A request (first attempt) was sent.
    public mutating func recordRequest(now: Int64) {
        advance(to: now)
        requests[current] += 1
    }

    /// Whether a retry may be sent now; if so it is counted.
    public mutating func tryRetry(now: Int64) -> Bool {
        advance(to: now)
        let reqs = Double(requests.reduce(0, +))
        let done = Double(retries.reduce(0, +))
        let seconds = Double(config.window.nanoseconds) / 1e9
        guard done < config.ratio * reqs + config.minPerSecond * seconds else { return false }
        retries[current] += 1
        return true
    }

    /// Requests and retries in the current window.
    public var counts: (requests: Int, retries: Int) { (requests.reduce(0, +), retries.reduce(0, +)) }
}
