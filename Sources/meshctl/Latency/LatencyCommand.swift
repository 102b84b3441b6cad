import ArgumentParser
import Foundation
import NIOCore
import NIOPosix

struct Latency: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Compare the latency of targets (direct, through a sidecar, through a node proxy) under one constant-rate workload.",
        discussion: """
            Each target gets the same workload, one after another: --rate requests per second spread over \
            --connections keep-alive HTTP/1.1 connections (--http2: HTTP/2 connections, one stream per request, many \
            in flight per connection), for --warmup (not recorded) and then --duration. The load \
            is open loop: request i is due at start + i/rate whether or not earlier ones have completed; if every \
            connection is busy it waits, and its latency counts from its due time (this corrects coordinated \
            omission). Latencies go into an HDR histogram (µs, 3 significant digits). The first target is the \
            baseline: the report shows every other target's added latency per percentile.
            """)

    @Option(
        name: .customLong("target"),
        help: ArgumentHelp("A target as NAME=http://HOST:PORT/PATH (repeatable; the first is the baseline).", valueName: "name=url"))
    var targets: [String] = []
    @Option(
        name: .customLong("via"),
        help: ArgumentHelp("A proxy address [NAME=]HOST:PORT, measured after the --target ones; needs --authority.", valueName: "addr"))
    var vias: [String] = []
    @Option(help: "Send this Host header (the service name a proxy routes on) to every target.") var authority: String?
    @Option(help: "Request path for --via targets.") var path: String = "/"
    @Option(
        name: .customLong("header"), help: ArgumentHelp("Extra request header NAME:VALUE (repeatable).", valueName: "name:value"))
    var headers: [String] = []
    @Option(help: "Requests per second (0 = as fast as possible, --closed-loop only).") var rate: Double = 1000
    @Option(help: "Keep-alive connections per target (HTTP/1.1: one request at a time each; --http2: many streams each).")
    var connections: Int = 8
    @Option(help: "Measured time per target.") var duration = DurationArgument(.seconds(10))
    @Option(help: "Time per target before measuring (sent, not recorded).") var warmup = DurationArgument(.seconds(2))
    @Option(help: "A request not answered this long after its scheduled time (closed loop: its send) fails as a timeout.")
    var timeout = DurationArgument(.seconds(5))
    @Option(name: .customLong("connect-timeout"), help: "Timeout of each connection attempt.")
    var connectTimeout = DurationArgument(.seconds(2))
    @Option(help: "Event loop threads of the load generator (1 or 2 on a small machine).") var threads: Int = 1
    @Flag(
        name: .customLong("closed-loop"),
        help: "Time from the actual send instead of the scheduled time (what a closed-loop client reports; for comparison).")
    var closedLoop = false
    @Flag(
        name: .customLong("http2"),
        help: "Speak HTTP/2 with prior knowledge (h2c): every request is a new stream, round robin over the connections.")
    var http2 = false
    @Option(help: ArgumentHelp("Write a percentile-distribution chart of all targets to this SVG file.", valueName: "file.svg"))
    var plot: String?
    @Option(name: [.short, .customLong("output")], help: "table or json.") var output: OutputFormat = .table

    func validate() throws {
        if targets.isEmpty && vias.isEmpty { throw ValidationError("give at least one --target or --via") }
        guard rate >= 0, rate.isFinite, rate <= 1_000_000 else { throw ValidationError("--rate must be between 0 and 1000000") }
        if rate == 0 && http2 {
            throw ValidationError("--rate 0 is not available with --http2 (no fixed number of requests in flight): give a rate")
        }
        if rate == 0 && !closedLoop { throw ValidationError("--rate 0 (as fast as possible) is closed loop: add --closed-loop") }
        guard (1...10_000).contains(connections) else { throw ValidationError("--connections must be between 1 and 10000") }
        guard (1...64).contains(threads) else { throw ValidationError("--threads must be between 1 and 64") }
        guard duration.nanoseconds > 0 else { throw ValidationError("--duration must be positive") }
        guard timeout.nanoseconds > 0, connectTimeout.nanoseconds > 0 else { throw ValidationError("timeouts must be positive") }
        for h in headers where !h.contains(":") { throw ValidationError("--header '\(h)': expected NAME:VALUE") }
    }

    func parsedTargets() throws -> [LatencyTarget] {
        var out: [LatencyTarget] = []
        do {
            for t in targets { out.append(try LatencyTarget.parse(target: t, authority: authority)) }
            for v in vias { out.append(try LatencyTarget.parse(via: v, authority: authority, path: path)) }
        } catch let e as LatencyTarget.ParseError {
            throw ValidationError(e.description)
        }
        var seen = Set<String>()
        for t in out where !seen.insert(t.name).inserted { throw ValidationError("two targets are named '\(t.name)'") }
        return out
    }

    var workload: Workload {
        let workers = min(threads, connections)
        return Workload(
            schedule: LoadSchedule(rate: rate, warmupNanos: warmup.nanoseconds, durationNanos: duration.nanoseconds, workers: workers),
            connections: connections, closedLoop: closedLoop, timeoutNanos: timeout.nanoseconds,
            connectTimeoutNanos: connectTimeout.nanoseconds,
            headers: headers.map { h in
                let i = h.firstIndex(of: ":")!
                return (
                    String(h[..<i]).trimmingCharacters(in: .whitespaces),
                    String(h[h.index(after: i)...]).trimmingCharacters(in: .whitespaces)
                )
            }, proto: http2 ? .h2 : .http1)
    }

    func run() async throws {
        let targets = try parsedTargets()
        let workload = self.workload
        let group = MultiThreadedEventLoopGroup(numberOfThreads: workload.schedule.workers)
        var measurements: [TargetMeasurement] = []
        do {
            for t in targets {
                if output == .table {
                    FileHandle.standardError.write(Data("measuring \(t.name) (\(t.label))…\n".utf8))
                }
                measurements.append(try await LoadRunner.measure(t, workload, group: group))
            }
        } catch {
            try? await group.shutdownGracefully()
            throw error
        }
        try await group.shutdownGracefully()
        let report = LatencyReport(
            settings: ReportSettings(
                rate: rate, connections: connections, durationSeconds: duration.seconds, warmupSeconds: warmup.seconds,
                timeoutSeconds: timeout.seconds, threads: workload.schedule.workers, closedLoop: closedLoop, authority: authority,
                proto: workload.proto),
            measurements: measurements)
        if let plot {
            let series = measurements.compactMap { LatencyPlot.series(name: $0.target.name, histogram: $0.result.latency) }
            let svg = LatencyPlot.svg(
                series, title: "Latency by percentile (\(closedLoop ? "closed" : "open") loop)", subtitle: report.modeDescription)
            do {
                try svg.write(toFile: plot, atomically: true, encoding: .utf8)
            } catch {
                FileHandle.standardError.write(Data("meshctl: cannot write \(plot): \(error.localizedDescription)\n".utf8))
                throw ExitCode(2)
            }
        }
        print(output == .json ? report.json() : report.table(), terminator: output == .json ? "\n" : "")
        // Exit 1 when a target could not be measured at all (no successful response).
        if measurements.contains(where: { $0.result.ok == 0 }) { throw ExitCode(1) }
    }
}
