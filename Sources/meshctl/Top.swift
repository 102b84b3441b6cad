import ArgumentParser
import Dispatch
import Foundation

#if canImport(Glibc)
    import Glibc
#endif

/// `meshctl top`: a live view of a running meshd per service and per route — request rate, success
/// rate, p50/p99 latency, in flight, retries, ejected endpoints — from the differences between two
/// scrapes of `/metrics` (and `/services` for requests in flight), refreshed every `--interval`.
struct Top: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Live per-service and per-route rates, success, latency, in-flight requests, retries and ejections.")

    @OptionGroup var options: AdminOptions

    @Option(help: "Seconds between two refreshes (and, with -o json, between the two scrapes compared).")
    var interval: Double = 1

    @Option(help: "Stop after this many refreshes (0: until Ctrl-C).")
    var iterations: Int = 0

    struct Row: Equatable {
        var kind: String  // service | route
        var name: String
        var direction: String
        var rps: Double
        var success: Double?
        var p50Ms: Double?
        var p99Ms: Double?
        var inFlight: Int?
        var retries: Double?
        var ejected: Int?
    }

    func validate() throws {
        guard interval >= 0.1 && interval <= 3600 else { throw ValidationError("--interval must be between 0.1 and 3600 seconds") }
        guard iterations >= 0 else { throw ValidationError("--iterations must be 0 or more") }
    }

    func scrape() async throws -> (MetricSamples, [String: Int], Date) {
        let r = try await AdminClient.request(admin: options.admin, path: "/metrics")
        guard r.status == 200 else { throw AdminClient.Failure(description: "/metrics: HTTP \(r.status)") }
        var inFlight: [String: Int] = [:]
        if let s = try? await AdminClient.request(admin: options.admin, path: "/services"), s.status == 200,
            let obj = try? JSONSerialization.jsonObject(with: Data(s.body.utf8)) as? [String: Any]
        {
            for svc in obj["services"] as? [[String: Any]] ?? [] {
                guard let name = svc["name"] as? String else { continue }
                let eps = svc["endpoints"] as? [[String: Any]] ?? []
                inFlight[name] = eps.reduce(0) { $0 + ($1["inFlight"] as? Int ?? 0) }
            }
        }
        return (MetricSamples.parse(r.body), inFlight, Date())
    }

    func run() async throws {
        if options.output == .json {
            let (a, _, t0) = try await scrape()
            try await Task.sleep(for: .milliseconds(Int(interval * 1000)))
            let (b, inFlight, t1) = try await scrape()
            let rows = Self.rows(before: a, after: b, seconds: t1.timeIntervalSince(t0), inFlight: inFlight)
            print(Self.json(rows, seconds: t1.timeIntervalSince(t0)))
            return
        }
        // Ctrl-C: leave the screen as it is (the last view stays readable) and exit 0.
        signal(SIGINT, SIG_IGN)
        let sigint = DispatchSource.makeSignalSource(signal: SIGINT, queue: .main)
        sigint.setEventHandler {
            print("\u{1B}[?25h")  // cursor back
            Foundation.exit(0)
        }
        sigint.resume()
        var (prev, _, t0) = try await scrape()
        var n = 0
        print("\u{1B}[?25l", terminator: "")  // no blinking cursor over the table
        while iterations == 0 || n < iterations {
            try await Task.sleep(for: .milliseconds(Int(interval * 1000)))
            let (cur, inFlight, t1) = try await scrape()
            let rows = Self.rows(before: prev, after: cur, seconds: t1.timeIntervalSince(t0), inFlight: inFlight)
            print("\u{1B}[H\u{1B}[2J", terminator: "")
            print("meshctl top — meshd \(options.admin), every \(interval) s (Ctrl-C to quit)   \(Self.clock(t1))\n")
            Self.table(rows)
            fflush(nil)  // every stream: the screen is drawn at once
            (prev, t0) = (cur, t1)
            n += 1
        }
        print("\u{1B}[?25h", terminator: "")
        sigint.cancel()
    }

    static func clock(_ d: Date) -> String {
        let f = DateFormatter()
        f.dateFormat = "HH:mm:ss"
        return f.string(from: d)
    }

    /// Rates and quantiles of what happened between two scrapes.
    static func rows(before: MetricSamples, after: MetricSamples, seconds: Double, inFlight: [String: Int]) -> [Row] {
        let secs = max(seconds, 0.001)
        var rows: [Row] = []
        let services = Set(
            after.keys(of: "meshd_requests_total").compactMap { l -> String? in
                guard let d = l["direction"], let s = l["service"] else { return nil }
                return d + "|" + s
            })
        for key in services.sorted() {
            let parts = key.split(separator: "|", maxSplits: 1).map(String.init)
            let (direction, service) = (parts[0], parts[1])
            let match = ["direction": direction, "service": service]
            let total = after.sum("meshd_requests_total", match) - before.sum("meshd_requests_total", match)
            let failed =
                after.sum("meshd_requests_total", match.merging(["status_class": "5xx"]) { a, _ in a })
                - before.sum("meshd_requests_total", match.merging(["status_class": "5xx"]) { a, _ in a })
            let h = after.histogram("meshd_request_duration_seconds", match, minus: before)
            let retries =
                direction == "outbound"
                ? after.sum("meshd_retries_total", ["service": service]) - before.sum("meshd_retries_total", ["service": service])
                : nil
            let ejected = direction == "outbound" ? Int(after.sum("meshd_outlier_ejected", ["service": service])) : nil
            rows.append(
                Row(
                    kind: "service", name: service, direction: direction, rps: total / secs,
                    success: total > 0 ? (total - failed) / total : nil, p50Ms: h.quantile(0.5).map { $0 * 1000 },
                    p99Ms: h.quantile(0.99).map { $0 * 1000 }, inFlight: direction == "outbound" ? inFlight[service] : nil,
                    retries: retries.map { $0 / secs }, ejected: ejected))
        }
        let routes = Set(after.keys(of: "meshd_route_requests_total").compactMap { $0["route"] })
        for route in routes.sorted() {
            let match = ["route": route]
            let total = after.sum("meshd_route_requests_total", match) - before.sum("meshd_route_requests_total", match)
            let five = ["route": route, "status_class": "5xx"]
            let failed = after.sum("meshd_route_requests_total", five) - before.sum("meshd_route_requests_total", five)
            let h = after.histogram("meshd_route_request_duration_seconds", match, minus: before)
            rows.append(
                Row(
                    kind: "route", name: route, direction: "outbound", rps: total / secs,
                    success: total > 0 ? (total - failed) / total : nil, p50Ms: h.quantile(0.5).map { $0 * 1000 },
                    p99Ms: h.quantile(0.99).map { $0 * 1000 }, inFlight: nil, retries: nil, ejected: nil))
        }
        return rows
    }

    static func table(_ rows: [Row]) {
        func f(_ v: Double?, _ fmt: String) -> String { v.map { String(format: fmt, $0) } ?? "-" }
        printTable(
            ["KIND", "NAME", "DIR", "RPS", "SUCCESS", "P50-MS", "P99-MS", "IN-FLIGHT", "RETRIES/S", "EJECTED"],
            rows.map { r in
                [
                    r.kind, r.name, r.direction, f(r.rps, "%.1f"), r.success.map { String(format: "%.2f%%", $0 * 100) } ?? "-",
                    f(r.p50Ms, "%.2f"), f(r.p99Ms, "%.2f"), r.inFlight.map(String.init) ?? "-", f(r.retries, "%.1f"),
                    r.ejected.map(String.init) ?? "-",
                ]
            })
    }

    static func json(_ rows: [Row], seconds: Double) -> String {
        let items: [[String: Any]] = rows.map { r in
            var d: [String: Any] = ["kind": r.kind, "name": r.name, "direction": r.direction, "rps": r.rps]
            if let v = r.success { d["success"] = v }
            if let v = r.p50Ms { d["p50Ms"] = v }
            if let v = r.p99Ms { d["p99Ms"] = v }
            if let v = r.inFlight { d["inFlight"] = v }
            if let v = r.retries { d["retriesPerSecond"] = v }
            if let v = r.ejected { d["ejected"] = v }
            return d
        }
        let data = (try? JSONSerialization.data(withJSONObject: ["seconds": seconds, "rows": items], options: [.sortedKeys])) ?? Data()
        return String(decoding: data, as: UTF8.self)
    }
}

/// Samples of a Prometheus text exposition: (metric name, labels) → value.
struct MetricSamples {
    var samples: [(name: String, labels: [String: String], value: Double)] = []

    static func parse(_ text: String) -> MetricSamples {
        var out = MetricSamples()
        for line in text.split(separator: "\n") where !line.hasPrefix("#") {
            let name: Substring
            var labels: [String: String] = [:]
            let rest: Substring
            if let open = line.firstIndex(of: "{"), let close = line.lastIndex(of: "}") {
                name = line[..<open]
                labels = MetricsSummary.labels(line[line.index(after: open)..<close])
                rest = line[line.index(after: close)...]
            } else if let space = line.firstIndex(of: " ") {
                name = line[..<space]
                rest = line[space...]
            } else {
                continue
            }
            guard let value = Double(rest.trimmingCharacters(in: .whitespaces).split(separator: " ").first ?? "") else {
                continue
            }
            out.samples.append((String(name), labels, value))
        }
        return out
    }

    func keys(of name: String) -> [[String: String]] { samples.filter { $0.name == name }.map(\.labels) }

    /// The sum over the series of `name` whose labels include `match`.
    func sum(_ name: String, _ match: [String: String]) -> Double {
        samples.reduce(0) { acc, s in
            s.name == name && match.allSatisfy({ s.labels[$0.key] == $0.value }) ? acc + s.value : acc
        }
    }

    /// The histogram `name` (its `_bucket` series matching `match`), minus an earlier scrape's.
    func histogram(_ name: String, _ match: [String: String], minus earlier: MetricSamples) -> LatencyHistogramReader {
        var byLe: [Double: Double] = [:]
        for (samples, sign) in [(self.samples, 1.0), (earlier.samples, -1.0)] {
            for s in samples where s.name == name + "_bucket" && match.allSatisfy({ s.labels[$0.key] == $0.value }) {
                guard let le = s.labels["le"] else { continue }
                byLe[le == "+Inf" ? .infinity : Double(le) ?? .infinity, default: 0] += sign * s.value
            }
        }
        var h = LatencyHistogramReader()
        for (le, c) in byLe { h.add(le: le, cumulative: max(0, c)) }
        return h
    }
}
