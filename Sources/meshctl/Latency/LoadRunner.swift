import Histogram
import NIOCore
import NIOHTTP1
import NIOPosix

/// The workload `meshctl latency` sends to every target.
struct Workload: Sendable {
    var schedule: LoadSchedule
    var connections: Int
    var closedLoop: Bool
    var timeoutNanos: UInt64
    var connectTimeoutNanos: UInt64
    var headers: [(String, String)]

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

    var achievedRate: Double { windowSeconds > 0 ? Double(result.completedInWindow) / windowSeconds : 0 }
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
                target: target, result: WorkerResult(), failure: "cannot resolve \(target.host): \(error)", windowSeconds: window)
        }
        var headers = HTTPHeaders()
        headers.add(name: "host", value: target.hostHeader)
        headers.add(name: "user-agent", value: "meshctl-latency")
        for (name, value) in workload.headers { headers.add(name: name, value: value) }
        let head = HTTPRequestHead(version: .http1_1, method: .GET, uri: target.path, headers: headers)

        let loops = Array(group.makeIterator())
        let workers = workload.schedule.workers
        var bound: [(EventLoop, NIOLoopBound<LoadWorker>)] = []
        for j in 0..<workers {
            let loop = loops[j % loops.count]
            // Connections spread over the workers; the first ones get the remainder.
            let connections = workload.connections / workers + (j < workload.connections % workers ? 1 : 0)
            let settings = LoadSettings(
                schedule: workload.schedule, connections: connections, closedLoop: workload.closedLoop,
                timeoutNanos: workload.timeoutNanos, connectTimeoutNanos: workload.connectTimeoutNanos,
                maxQueue: max(1, workload.maxQueue / workers))
            let w = try await loop.submit {
                NIOLoopBound(LoadWorker(loop: loop, index: j, address: address, requestHead: head, settings: settings), eventLoop: loop)
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
                failure: "cannot connect to \(target.host):\(target.port): \(firstError ?? "unknown error")", windowSeconds: window)
        }
        // A common start a little ahead, so that every worker is armed before the first request is due.
        let start = monotonicNanos() + 20_000_000
        let futures = bound.map { (loop, w) in loop.flatSubmit { w.value.run(start: start) } }
        var merged = WorkerResult()
        for f in futures { merged.merge(try await f.get()) }
        return TargetMeasurement(target: target, result: merged, failure: nil, windowSeconds: window)
    }
}
