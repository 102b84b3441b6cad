import Histogram

/// When each request of a constant-rate run is due. Request `g` (0, 1, 2, …) is due at
/// `start + g / rate`; with W workers (one per event loop), worker `j` owns the requests with
/// `g % W == j`, so together they keep the one global schedule.
struct LoadSchedule: Sendable, Equatable {
    /// Requests per second; 0 means unthrottled (closed loop only: each connection sends its next
    /// request as soon as the previous one completes).
    var rate: Double
    var warmupNanos: UInt64
    var durationNanos: UInt64
    var workers: Int

    var unthrottled: Bool { rate == 0 }
    var totalNanos: UInt64 { warmupNanos + durationNanos }

    /// Requests due before the end of the run (warm-up included): those with `g / rate < warmup + duration`.
    var totalRequests: UInt64 {
        guard rate > 0 else { return 0 }
        let exact = Double(totalNanos) / 1e9 * rate
        let n = UInt64(exact.rounded(.up))
        // g is due strictly before the end: drop the last one if it lands exactly on it.
        return (n > 0 && offsetNanos(n - 1) >= totalNanos) ? n - 1 : n
    }

    /// Nanoseconds after the start at which global request `g` is due.
    func offsetNanos(_ g: UInt64) -> UInt64 {
        UInt64((Double(g) * 1e9 / rate).rounded())
    }

    /// How many of the requests worker `j` owns.
    func requests(forWorker j: Int) -> UInt64 {
        let total = totalRequests
        let w = UInt64(workers)
        let j = UInt64(j)
        return total > j ? (total - 1 - j) / w + 1 : 0
    }

    /// The global index of worker `j`'s `i`-th request.
    func globalIndex(worker j: Int, local i: UInt64) -> UInt64 { i * UInt64(workers) + UInt64(j) }

    /// Requests due inside the measured window (after the warm-up).
    var measuredRequests: UInt64 {
        let total = totalRequests
        var firstMeasured: UInt64 = UInt64((Double(warmupNanos) / 1e9 * rate).rounded(.down))
        while firstMeasured > 0 && offsetNanos(firstMeasured - 1) >= warmupNanos { firstMeasured -= 1 }
        while firstMeasured < total && offsetNanos(firstMeasured) < warmupNanos { firstMeasured += 1 }
        return total - min(total, firstMeasured)
    }
}

/// Round robin over a fixed set of connections of which only some are usable at a time (connected,
/// not draining): each pick starts just after the previous one, so the usable ones take turns.
struct RoundRobin: Sendable, Equatable {
    /// Where the next search starts.
    private(set) var next = 0

    /// The first usable index at or after `next` (wrapping), or nil when none of the `count` is usable.
    mutating func pick(count: Int, isUsable: (Int) -> Bool) -> Int? {
        guard count > 0 else { return nil }
        for k in 0..<count {
            let i = (next + k) % count
            if isUsable(i) {
                next = (i + 1) % count
                return i
            }
        }
        return nil
    }
}

/// Everything a worker needs to run its share of the load against one target.
struct LoadSettings: Sendable {
    var schedule: LoadSchedule
    /// Connections this worker keeps open.
    var connections: Int
    /// Time latency from the actual send instead of the scheduled time (what a closed-loop client
    /// reports: the time a request waited for a free connection is omitted).
    var closedLoop: Bool
    /// A request not complete this long after its start time (scheduled time, or the send in closed
    /// loop) fails as a timeout; open loop also expires queued requests this old.
    var timeoutNanos: UInt64
    var connectTimeoutNanos: UInt64
    /// Bound on requests waiting for a free connection (beyond it they fail as `dropped`).
    var maxQueue: Int
    /// Pause before reconnecting after a failed connect.
    var reconnectDelayNanos: UInt64 = 100_000_000
}

/// Error counts by kind. Only requests due in the measured window are counted (and connect failures
/// that happen in it).
struct ErrorCounts: Sendable, Equatable {
    /// Failed connection attempts.
    var connect: UInt64 = 0
    /// Responses with a status outside 200–299.
    var status: UInt64 = 0
    /// No complete response within `--timeout`.
    var timeout: UInt64 = 0
    /// The connection closed or failed while the request was in flight (HTTP/2: also a stream the
    /// server reset or that could not be opened).
    var io: UInt64 = 0
    /// Refused because the queue of requests waiting for a connection was full.
    var dropped: UInt64 = 0

    var total: UInt64 { connect + status + timeout + io + dropped }
    /// Errors that stand for a request that did not succeed (connect failures are attempts, not requests).
    var failedRequests: UInt64 { status + timeout + io + dropped }

    static func + (a: ErrorCounts, b: ErrorCounts) -> ErrorCounts {
        ErrorCounts(
            connect: a.connect + b.connect, status: a.status + b.status, timeout: a.timeout + b.timeout, io: a.io + b.io,
            dropped: a.dropped + b.dropped)
    }
}

/// Latencies are recorded in microseconds, 3 significant digits, up to one hour.
enum LatencyUnits {
    static let highestTrackableMicros: UInt64 = 3_600_000_000

    static func makeHistogram() -> Histogram<UInt64> {
        Histogram<UInt64>(lowestDiscernibleValue: 1, highestTrackableValue: highestTrackableMicros, numberOfSignificantValueDigits: .three)
    }

    /// Nanoseconds → microseconds, rounded to nearest, clamped to the histogram's range.
    static func micros(_ nanos: UInt64) -> UInt64 { min((nanos + 500) / 1000, highestTrackableMicros) }
}

/// What one worker measured.
struct WorkerResult: Sendable {
    var latency = LatencyUnits.makeHistogram()
    /// Scheduled time → the moment the request was written (queueing in the client plus scheduler lag).
    var sendDelay = LatencyUnits.makeHistogram()
    var ok: UInt64 = 0
    var errors = ErrorCounts()
    /// Successful responses that completed inside the measured window (for the achieved rate).
    var completedInWindow: UInt64 = 0
    /// Requests due in the measured window that this worker owned (sent or not).
    var measuredRequests: UInt64 = 0
    /// Connections that connected at least once.
    var connected = 0
    var firstConnectError: String?

    mutating func merge(_ other: WorkerResult) {
        latency.add(other.latency)
        sendDelay.add(other.sendDelay)
        ok += other.ok
        errors = errors + other.errors
        completedInWindow += other.completedInWindow
        measuredRequests += other.measuredRequests
        connected += other.connected
        if firstConnectError == nil { firstConnectError = other.firstConnectError }
    }
}
