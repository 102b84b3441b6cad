import Foundation
import Histogram

/// Latency percentiles in milliseconds.
struct Percentiles: Sendable, Equatable {
    var p50: Double
    var p90: Double
    var p99: Double
    var p999: Double
    var max: Double

    static let keys = ["p50", "p90", "p99", "p999", "max"]
    static let labels = ["P50", "P90", "P99", "P99.9", "MAX"]

    var values: [Double] { [p50, p90, p99, p999, max] }

    /// From a histogram in microseconds; nil when it is empty.
    init?(_ h: Histogram<UInt64>) {
        guard h.totalCount > 0 else { return nil }
        func ms(_ us: UInt64) -> Double { Double(us) / 1000 }
        p50 = ms(h.valueAtPercentile(50))
        p90 = ms(h.valueAtPercentile(90))
        p99 = ms(h.valueAtPercentile(99))
        p999 = ms(h.valueAtPercentile(99.9))
        max = ms(h.maxRecorded)
    }

    init(p50: Double, p90: Double, p99: Double, p999: Double, max: Double) {
        (self.p50, self.p90, self.p99, self.p999, self.max) = (p50, p90, p99, p999, max)
    }

    static func - (a: Percentiles, b: Percentiles) -> Percentiles {
        Percentiles(p50: a.p50 - b.p50, p90: a.p90 - b.p90, p99: a.p99 - b.p99, p999: a.p999 - b.p999, max: a.max - b.max)
    }
}

/// The settings a report was measured with (printed with it, and in the JSON).
struct ReportSettings: Sendable {
    var rate: Double
    var connections: Int
    var durationSeconds: Double
    var warmupSeconds: Double
    var timeoutSeconds: Double
    var threads: Int
    var closedLoop: Bool
    var authority: String?
    var proto: LoadProtocol = .http1
}

/// Renders measurements as a table or JSON; the first target is the baseline for "added".
struct LatencyReport {
    var settings: ReportSettings
    var measurements: [TargetMeasurement]

    var baseline: Percentiles? { measurements.first.flatMap { Percentiles($0.result.latency) } }

    func added(_ m: TargetMeasurement) -> Percentiles? {
        guard let base = baseline, let p = Percentiles(m.result.latency) else { return nil }
        return p - base
    }

    static func ms(_ v: Double) -> String { String(format: "%.3f", v) }
    static func signed(_ v: Double) -> String { (v >= 0 ? "+" : "") + String(format: "%.3f", v) }

    var modeDescription: String {
        let rate = settings.rate == 0 ? "unthrottled" : "\(String(format: "%g", settings.rate)) req/s"
        let loop =
            settings.closedLoop
            ? "closed loop: timed from the actual send (client-side queueing omitted)"
            : "open loop: timed from each request's scheduled send time"
        return
            "\(rate), \(settings.connections) connections, \(String(format: "%g", settings.durationSeconds))s after "
            + "\(String(format: "%g", settings.warmupSeconds))s warm-up, \(settings.proto.label), \(loop)"
    }

    func table() -> String {
        var out = "meshctl latency: \(modeDescription)\n\n"
        var rows: [[String]] = []
        for m in measurements {
            let p = Percentiles(m.result.latency)
            let cells = p.map { $0.values.map(Self.ms) } ?? Array(repeating: "-", count: 5)
            rows.append(
                [m.target.name, m.target.label, String(format: "%.1f", m.achievedRate), String(m.result.ok), String(m.result.errors.total)]
                    + cells)
        }
        out += Self.render(["TARGET", "URL", "ACHIEVED/S", "OK", "ERRORS"] + Percentiles.labels.map { $0 + "-MS" }, rows)
        if measurements.count > 1, let first = measurements.first {
            out += "\nadded latency against \(first.target.name) (ms)\n"
            var added: [[String]] = []
            for m in measurements.dropFirst() {
                added.append([m.target.name] + (self.added(m).map { $0.values.map(Self.signed) } ?? Array(repeating: "-", count: 5)))
            }
            out += Self.render(["TARGET"] + Percentiles.labels, added)
        }
        var notes: [String] = []
        for m in measurements {
            if let failure = m.failure { notes.append("\(m.target.name): \(failure)") }
            let e = m.result.errors
            if e.total > 0 {
                let kinds = [("connect", e.connect), ("status", e.status), ("timeout", e.timeout), ("io", e.io), ("dropped", e.dropped)]
                    .filter { $0.1 > 0 }.map { "\($0.0) \($0.1)" }.joined(separator: ", ")
                notes.append("\(m.target.name): \(e.total) errors (\(kinds))")
            }
        }
        if !notes.isEmpty { out += "\n" + notes.joined(separator: "\n") + "\n" }
        return out
    }

    static func render(_ header: [String], _ rows: [[String]]) -> String {
        var widths = header.map(\.count)
        for row in rows { for (i, cell) in row.enumerated() where i < widths.count { widths[i] = Swift.max(widths[i], cell.count) } }
        func line(_ cells: [String]) -> String {
            cells.enumerated().map { i, c in i == cells.count - 1 ? c : c.padding(toLength: widths[i], withPad: " ", startingAt: 0) }
                .joined(separator: "  ")
        }
        return ([line(header)] + rows.map(line)).joined(separator: "\n") + "\n"
    }

    static func percentileObject(_ p: Percentiles?) -> Any {
        guard let p else { return NSNull() }
        var o: [String: Any] = [:]
        for (k, v) in zip(Percentiles.keys, p.values) { o[k] = (v * 1000).rounded() / 1000 }
        return o
    }

    func jsonObject() -> [String: Any] {
        var targets: [[String: Any]] = []
        for (i, m) in measurements.enumerated() {
            let e = m.result.errors
            var t: [String: Any] = [
                "name": m.target.name, "url": m.target.label, "host": m.target.hostHeader, "protocol": m.proto.rawValue,
                "achievedRate": (m.achievedRate * 10).rounded() / 10, "requests": Int(m.result.measuredRequests), "ok": Int(m.result.ok),
                "errors": Int(e.total),
                "errorKinds": [
                    "connect": Int(e.connect), "status": Int(e.status), "timeout": Int(e.timeout), "io": Int(e.io),
                    "dropped": Int(e.dropped),
                ],
                "baseline": i == 0,
            ]
            let p = Percentiles(m.result.latency)
            for (k, v) in zip(Percentiles.keys, p?.values ?? []) { t[k] = (v * 1000).rounded() / 1000 }
            if p == nil { for k in Percentiles.keys { t[k] = NSNull() } }
            t["added"] = Self.percentileObject(i == 0 ? p.map { $0 - $0 } : added(m))
            t["sendDelay"] = Self.percentileObject(Percentiles(m.result.sendDelay))
            if let failure = m.failure { t["failure"] = failure }
            targets.append(t)
        }
        return [
            "settings": [
                "rate": settings.rate, "connections": settings.connections, "duration": settings.durationSeconds,
                "warmup": settings.warmupSeconds, "timeout": settings.timeoutSeconds, "threads": settings.threads,
                "mode": settings.closedLoop ? "closed-loop" : "open-loop", "protocol": settings.proto == .h2 ? "HTTP/2" : "HTTP/1.1",
                "authority": settings.authority.map { $0 as Any } ?? NSNull(), "unit": "ms",
            ],
            "targets": targets,
        ]
    }

    func json() -> String {
        let data = try! JSONSerialization.data(
            withJSONObject: jsonObject(), options: [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes])
        return String(decoding: data, as: UTF8.self)
    }
}
