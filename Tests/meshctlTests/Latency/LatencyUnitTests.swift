import Foundation
import Histogram
import Testing

@testable import meshctl

#if canImport(FoundationXML)
    import FoundationXML
#endif

@Suite("latency: schedule, targets, report, plot")
struct LatencyUnitTests {
    @Test("request g is due at g / rate; the workers split the schedule without gaps or overlaps")
    func schedule() {
        let s = LoadSchedule(rate: 1000, warmupNanos: 500_000_000, durationNanos: 2_000_000_000, workers: 1)
        #expect(s.totalRequests == 2500)
        #expect(s.measuredRequests == 2000)
        #expect(s.offsetNanos(0) == 0)
        #expect(s.offsetNanos(1) == 1_000_000)
        #expect(s.offsetNanos(2499) == 2_499_000_000)
        let odd = LoadSchedule(rate: 333, warmupNanos: 0, durationNanos: 1_000_000_000, workers: 3)
        #expect(odd.totalRequests == 333)
        var all: [UInt64] = []
        for j in 0..<3 {
            for i in 0..<odd.requests(forWorker: j) { all.append(odd.globalIndex(worker: j, local: i)) }
        }
        #expect(all.sorted() == Array(0..<333))
        for g in 0..<odd.totalRequests { #expect(odd.offsetNanos(g) < 1_000_000_000) }
        #expect(odd.offsetNanos(odd.totalRequests) >= 1_000_000_000)
        // Fractional rates.
        let slow = LoadSchedule(rate: 2.5, warmupNanos: 0, durationNanos: 2_000_000_000, workers: 2)
        #expect(slow.totalRequests == 5)
        #expect(slow.requests(forWorker: 0) == 3)
        #expect(slow.requests(forWorker: 1) == 2)
    }

    @Test("the queue bound is one timeout's worth of requests, at least 1024")
    func queueBound() {
        func w(_ rate: Double, _ timeout: UInt64) -> Workload {
            Workload(
                schedule: LoadSchedule(rate: rate, warmupNanos: 0, durationNanos: 1, workers: 1), connections: 1, closedLoop: false,
                timeoutNanos: timeout, connectTimeoutNanos: 1, headers: [])
        }
        #expect(w(100, 5_000_000_000).maxQueue == 1024)
        #expect(w(10_000, 5_000_000_000).maxQueue == 50_000)
    }

    @Test("round robin: the usable connections take turns, the others are skipped")
    func roundRobin() {
        var rr = RoundRobin()
        #expect((0..<6).map { _ in rr.pick(count: 3) { _ in true } } == [0, 1, 2, 0, 1, 2])
        // 1 is full or not connected: 0 and 2 alternate.
        #expect((0..<4).map { _ in rr.pick(count: 3) { $0 != 1 } } == [0, 2, 0, 2])
        // Only 1 is usable: it is found wherever the search starts.
        #expect(rr.pick(count: 3) { $0 == 1 } == 1)
        #expect(rr.next == 2)
        #expect(rr.pick(count: 3) { _ in false } == nil)
        #expect(rr.next == 2, "a failed pick does not move the cursor")
        #expect(rr.pick(count: 0) { _ in true } == nil)
    }

    @Test("--http2 is parsed into the workload; --rate 0 is refused with it")
    func http2Flag() throws {
        let h2 = try Latency.parse(["--target", "x=http://127.0.0.1:1/", "--http2"])
        #expect(h2.workload.proto == .h2)
        let h1 = try Latency.parse(["--target", "x=http://127.0.0.1:1/"])
        #expect(h1.workload.proto == .http1)
        #expect(throws: (any Error).self) {
            try Latency.parse(["--target", "x=http://127.0.0.1:1/", "--http2", "--rate", "0", "--closed-loop"])
        }
    }

    @Test("HTTP/2 errors are reported by name, without NIO's source location")
    func h2ErrorText() {
        struct Located: Error, CustomStringConvertible {
            var description: String { #"StreamClosed(streamID: HTTP2StreamID(1), location: "NIOHTTP2/X.swift:1")"# }
        }
        struct Plain: Error, CustomStringConvertible {
            var description: String { "connection reset (error set): Connection refused (errno: 111)" }
        }
        #expect(H2LoadWorker.describe(Located()) == "StreamClosed")
        #expect(H2LoadWorker.describe(Plain()) == Plain().description)
    }

    @Test("targets: NAME=URL, bare URLs, --via with --authority")
    func targets() throws {
        let t = try LatencyTarget.parse(target: "direct=http://10.0.0.9:8080/api?x=1", authority: nil)
        #expect(t.name == "direct")
        #expect(t.host == "10.0.0.9")
        #expect(t.port == 8080)
        #expect(t.path == "/api?x=1")
        #expect(t.hostHeader == "10.0.0.9:8080")
        let s = try LatencyTarget.parse(target: "sidecar=http://127.0.0.1:4140", authority: "orders")
        #expect(s.path == "/")
        #expect(s.hostHeader == "orders")
        let bare = try LatencyTarget.parse(target: "http://127.0.0.1/x=y", authority: nil)
        #expect(bare.name == "127.0.0.1:80")
        #expect(bare.path == "/x=y")
        #expect(bare.hostHeader == "127.0.0.1")
        let v6 = try LatencyTarget.parse(target: "v6=http://[::1]:9000/", authority: nil)
        #expect(v6.host == "::1")
        #expect(v6.hostHeader == "[::1]:9000")
        let via = try LatencyTarget.parse(via: "node=10.1.2.3:4140", authority: "orders", path: "health")
        #expect(via.name == "node")
        #expect(via.host == "10.1.2.3")
        #expect(via.port == 4140)
        #expect(via.path == "/health")
        #expect(via.hostHeader == "orders")
        #expect(throws: LatencyTarget.ParseError.self) { try LatencyTarget.parse(via: "127.0.0.1:4140", authority: nil, path: "/") }
        #expect(throws: LatencyTarget.ParseError.self) { try LatencyTarget.parse(target: "x=https://example/", authority: nil) }
        #expect(throws: LatencyTarget.ParseError.self) { try LatencyTarget.parse(target: "x=nonsense", authority: nil) }
    }

    static func histogram(_ valuesMicros: [UInt64]) -> Histogram<UInt64> {
        var h = LatencyUnits.makeHistogram()
        for v in valuesMicros { h.record(v) }
        return h
    }

    static func measurement(_ name: String, _ values: [UInt64], completed: UInt64 = 0) -> TargetMeasurement {
        var r = WorkerResult()
        r.latency = histogram(values)
        r.ok = UInt64(values.count)
        r.measuredRequests = UInt64(values.count)
        r.completedInWindow = completed
        return TargetMeasurement(
            target: try! LatencyTarget.parse(target: "\(name)=http://127.0.0.1:1/", authority: nil), result: r, failure: nil,
            windowSeconds: 2)
    }

    @Test("percentiles in ms from a µs histogram; added latency against the first target; JSON shape")
    func report() throws {
        // 1000 values 1..1000 µs, and the same plus 250 µs.
        let base = Array(UInt64(1)...1000)
        let slower = base.map { $0 + 250 }
        let p = try #require(Percentiles(Self.histogram(base)))
        #expect(p.p50 == 0.5)
        #expect(p.p90 == 0.9)
        #expect(p.p99 == 0.99)
        #expect(p.p999 == 0.999)
        #expect(p.max == 1.0)
        let report = LatencyReport(
            settings: ReportSettings(
                rate: 500, connections: 2, durationSeconds: 2, warmupSeconds: 0, timeoutSeconds: 5, threads: 1, closedLoop: false,
                authority: "orders"),
            measurements: [Self.measurement("direct", base, completed: 1000), Self.measurement("sidecar", slower, completed: 998)])
        let added = try #require(report.added(report.measurements[1]))
        #expect(abs(added.p50 - 0.25) < 0.002)
        #expect(abs(added.p99 - 0.25) < 0.002)
        let json = try #require(JSONSerialization.jsonObject(with: Data(report.json().utf8)) as? [String: Any])
        let targets = try #require(json["targets"] as? [[String: Any]])
        #expect(targets.count == 2)
        for key in ["name", "achievedRate", "errors", "p50", "p90", "p99", "p999", "max", "added"] {
            #expect(targets[1][key] != nil, "missing \(key)")
        }
        #expect(targets[0]["name"] as? String == "direct")
        #expect((targets[0]["achievedRate"] as? Double) == 500)
        #expect((targets[1]["achievedRate"] as? Double) == 499)
        let a = try #require(targets[1]["added"] as? [String: Any])
        #expect(abs((a["p50"] as? Double ?? 0) - 0.25) < 0.002)
        let a0 = try #require(targets[0]["added"] as? [String: Any])
        #expect(a0["p50"] as? Double == 0)
        let table = report.table()
        #expect(table.contains("added latency against direct"))
        #expect(table.contains("+0.25"))
        #expect(table.contains("HTTP/1.1"))
        #expect(targets[0]["protocol"] as? String == "http/1.1")
        let settings = try #require(json["settings"] as? [String: Any])
        #expect(settings["protocol"] as? String == "HTTP/1.1")
    }

    @Test("an HTTP/2 run says so: per target (h2), in the settings and in the table's header")
    func reportHTTP2() throws {
        var m = Self.measurement("direct", [100, 200, 300], completed: 3)
        m.proto = .h2
        let report = LatencyReport(
            settings: ReportSettings(
                rate: 10, connections: 1, durationSeconds: 1, warmupSeconds: 0, timeoutSeconds: 5, threads: 1, closedLoop: false,
                authority: nil, proto: .h2),
            measurements: [m])
        let json = try #require(JSONSerialization.jsonObject(with: Data(report.json().utf8)) as? [String: Any])
        let targets = try #require(json["targets"] as? [[String: Any]])
        #expect(targets[0]["protocol"] as? String == "h2")
        let settings = try #require(json["settings"] as? [String: Any])
        #expect(settings["protocol"] as? String == "HTTP/2")
        #expect(report.table().contains("HTTP/2 (h2c)"))
    }

    final class SVGCounter: NSObject, XMLParserDelegate {
        var polylines = 0
        var texts: [String] = []
        var inText = false
        func parser(
            _ parser: XMLParser, didStartElement elementName: String, namespaceURI: String?, qualifiedName qName: String?,
            attributes attributeDict: [String: String] = [:]
        ) {
            if elementName == "polyline" { polylines += 1 }
            if elementName == "text" {
                inText = true
                texts.append("")
            }
        }
        func parser(_ parser: XMLParser, foundCharacters string: String) { if inText { texts[texts.count - 1] += string } }
        func parser(_ parser: XMLParser, didEndElement elementName: String, namespaceURI: String?, qualifiedName qName: String?) {
            if elementName == "text" { inText = false }
        }
    }

    @Test("the plot is well-formed SVG with one line per target on a 0 % … 99.9 % axis")
    func plot() throws {
        let series = [
            try #require(LatencyPlot.series(name: "direct", histogram: Self.histogram(Array(UInt64(100)...2100)))),
            try #require(LatencyPlot.series(name: "side<car>", histogram: Self.histogram(Array(UInt64(300)...2300)))),
        ]
        let svg = LatencyPlot.svg(series, title: "t & t")
        let counter = SVGCounter()
        let parser = XMLParser(data: Data(svg.utf8))
        parser.delegate = counter
        #expect(parser.parse(), "SVG is not well-formed XML")
        #expect(counter.polylines == 2)
        for label in ["0%", "90%", "99%", "99.9%", "direct", "side<car>", "latency (ms)", "percentile"] {
            #expect(counter.texts.contains(label), "missing label \(label)")
        }
        #expect(LatencyPlot.percentileLabel(4) == "99.99%")
        #expect(LatencyPlot.niceStep(2.3) == 0.5)
        #expect(LatencyPlot.niceStep(2300) == 500)
    }
}
