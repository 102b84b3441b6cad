import Histogram
import NIOCore
import NIOHTTP1
import NIOPosix

/// The HTTP version the load is sent with.
enum LoadProtocol: String, Sendable {
    /// Keep-alive HTTP/1.1 connections, one request at a time each.
    case http1 = "http/1.1"
    /// HTTP/2 over cleartext with prior knowledge (h2c): one stream per request, many at a time per connection.
    case h2

    /// For reports.
    var label: String {
        switch self {
        case .http1: "HTTP/1.1"
        case .h2: "HTTP/2 (h2c)"
        }
    }
}

/// The workload `meshctl latency` sends to every target.
struct Workload: Sendable {
    var schedule: LoadSchedule
    var connections: Int
    var closedLoop: Bool
    var timeoutNanos: UInt64
    var connectTimeoutNanos: UInt64
    var headers: [(String, String)]
    var proto: LoadProtocol = .http1

    /// Bound on requests waiting for a free connection, over all workers: the requests of one timeout
    /// period (at least 1024). Open loop expires older ones as timeouts before the bound is reached.
    var maxQueue: Int {
        let perTimeout = schedule.rate * Double(timeoutNanos) / 1e9
        return Int(min(max(1024, perTimeout.rounded(.up)), 10_000_000))
    }
}

/// What one target measured: the merged result of its workers, or why it could not be measured.
struct TargetMeasurement: Sendable {
    var target: LatencyTarget
    var result: WorkerResult
    /// Set when no connection could be opened at all.
    var failure: String?
    /// Seconds of the measured window (for the achieved rate).
    var windowSeconds: Double
    var proto: LoadProtocol = .http1

    var achievedRate: Double { windowSeconds > 0 ? Double(result.completedInWindow) / windowSeconds : 0 }
}

/// One event loop's share of the load against one target, whatever the protocol (`LoadWorker` for
/// HTTP/1.1, `H2LoadWorker` for HTTP/2). Used on its loop only.
protocol LoadWorking: AnyObject {
    /// Opens the connections once; succeeds (with the number that connected) when every first
    /// attempt has finished, whatever its outcome.
    func connectAll() -> EventLoopFuture<Int>
    /// Runs this worker's share of the schedule from `start` (monotonic nanoseconds); completes once
    /// every request is answered, failed or timed out and the connections are closed.
    func run(start: UInt64) -> EventLoopFuture<WorkerResult>
    /// The first connect error seen (for the report when no connection could be opened).
    var firstConnectError: String? { get }
}

enum LoadRunner {
    /// Measures one target with `workload` on the loops of `group` (one worker per loop).
    static func measure(_ target: LatencyTarget, _ workload: Workload, group: MultiThreadedEventLoopGroup) async throws
        -> TargetMeasurement
    {
        let window = Double(workload.schedule.durationNanos) / 1e9
        let address: SocketAddress
        do {
            address = try SocketAddress.makeAddressResolvingHost(target.host, port: target.port)
        } catch {
            return TargetMeasurement(
                target: target, result: WorkerResult(), failure: "cannot resolve \(target.host): \(error)", windowSeconds: window,
                proto: workload.proto)
        }
        var headers = HTTPHeaders()
        headers.add(name: "host", value: target.hostHeader)
        headers.add(name: "user-agent", value: "meshctl-latency")
        for (name, value) in workload.headers { headers.add(name: name, value: value) }
        let head = HTTPRequestHead(version: .http1_1, method: .GET, uri: target.path, headers: headers)

        let loops = Array(group.makeIterator())
        let workers = workload.schedule.workers
        var bound: [(EventLoop, NIOLoopBound<any LoadWorking>)] = []
        for j in 0..<workers {
            let loop = loops[j % loops.count]
            // Connections spread over the workers; the first ones get the remainder.
            let connections = workload.connections / workers + (j < workload.connections % workers ? 1 : 0)
            let settings = LoadSettings(
                schedule: workload.schedule, connections: connections, closedLoop: workload.closedLoop,
                timeoutNanos: workload.timeoutNanos, connectTimeoutNanos: workload.connectTimeoutNanos,
                maxQueue: max(1, workload.maxQueue / workers))
            let proto = workload.proto
            let w = try await loop.submit {
                let worker: any LoadWorking =
                    switch proto {
                    case .http1: LoadWorker(loop: loop, index: j, address: address, requestHead: head, settings: settings)
                    case .h2: H2LoadWorker(loop: loop, index: j, address: address, requestHead: head, settings: settings)
                    }
                return NIOLoopBound(worker, eventLoop: loop)
            }.get()
            bound.append((loop, w))
        }
        var connected = 0
        for (loop, w) in bound { connected += try await loop.flatSubmit { w.value.connectAll() }.get() }
        if connected == 0 {
            var firstError: String? = nil
            for (loop, w) in bound {
                let e = try await loop.submit { w.value.firstConnectError }.get()
                if firstError == nil { firstError = e }
            }
            return TargetMeasurement(
                target: target, result: WorkerResult(),
                failure: "cannot connect to \(target.host):\(target.port): \(firstError ?? "unknown error")", windowSeconds: window,
                proto: workload.proto)
        }
        // A common start a little ahead, so that every worker is armed before the first request is due.
        let start = monotonicNanos() + 20_000_000
        let futures = bound.map { (loop, w) in loop.flatSubmit { w.value.run(start: start) } }
        var merged = WorkerResult()
        for f in futures { merged.merge(try await f.get()) }
        return TargetMeasurement(target: target, result: merged, failure: nil, windowSeconds: window, proto: workload.proto)
    }
}
