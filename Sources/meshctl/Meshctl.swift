import ArgumentParser
import Foundation
import MeshCore

@main
struct Meshctl: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "meshctl",
        abstract:
            "Inspect a running meshd through its admin API, validate configuration files, inject meshd into Kubernetes manifests, "
            + "and measure the latency and footprint of the placements.",
        subcommands: [
            Routes.self, Services.self, ConfigCommand.self, Metrics.self, Check.self, Inject.self, Latency.self, Footprint.self,
            DelayBackendCommand.self, Demo.self, IdentityCommand.self, Top.self, Tap.self,
        ])
}

struct AdminOptions: ParsableArguments {
    @Option(name: .long, help: "meshd admin address HOST:PORT.")
    var admin: String = "127.0.0.1:4191"

    @Option(name: [.short, .customLong("output")], help: "table or json.")
    var output: OutputFormat = .table
}

enum OutputFormat: String, ExpressibleByArgument, Sendable {
    case table
    case json
}

func fetchJSON(_ options: AdminOptions, _ path: String) async throws -> (raw: String, value: Any) {
    let r = try await AdminClient.request(admin: options.admin, path: path)
    guard r.status == 200 else { throw AdminClient.Failure(description: "\(path): HTTP \(r.status): \(r.body)") }
    let value = try JSONSerialization.jsonObject(with: Data(r.body.utf8))
    return (r.body, value)
}

/// Prints rows as an aligned text table.
func printTable(_ header: [String], _ rows: [[String]]) {
    var widths = header.map(\.count)
    for row in rows { for (i, cell) in row.enumerated() where i < widths.count { widths[i] = max(widths[i], cell.count) } }
    func line(_ cells: [String]) -> String {
        cells.enumerated().map { i, c in i == cells.count - 1 ? c : c.padding(toLength: widths[i], withPad: " ", startingAt: 0) }
            .joined(separator: "  ")
    }
    print(line(header))
    for row in rows { print(line(row)) }
}

func str(_ v: Any?) -> String {
    switch v {
    case nil, is NSNull: return "-"
    case let d as Double where d != d.rounded(): return String(format: "%.2f", d)
    case let n as NSNumber: return n.stringValue
    case let s as String: return s
    default: return "\(v!)"
    }
}

struct Routes: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "The route table as meshd applies it.")
    @OptionGroup var options: AdminOptions

    func run() async throws {
        let (raw, value) = try await fetchJSON(options, "/routes")
        if options.output == .json {
            print(raw, terminator: "")
            return
        }
        let routes = ((value as? [String: Any])?["routes"] as? [[String: Any]]) ?? []
        printTable(
            ["ROUTE", "AUTHORITY", "PATH", "METHOD", "HEADERS", "BACKENDS", "TIMEOUT"],
            routes.map { r in
                let m = r["match"] as? [String: Any] ?? [:]
                let headers = (m["headers"] as? [String: Any])?.map { "\($0.key)=\(str($0.value))" }.sorted().joined(separator: ",")
                let backends = (r["backends"] as? [[String: Any]] ?? []).map { "\(str($0["service"]))(\(str($0["weight"])))" }
                return [
                    str(r["name"]), str(m["authority"]), str(m["pathPrefix"]), str(m["method"]), headers ?? "-",
                    backends.joined(separator: ","), str(r["timeout"]),
                ]
            })
    }
}

struct Services: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Services and their endpoints with state and in-flight requests.")
    @OptionGroup var options: AdminOptions
    @Argument(help: "Only this service.") var name: String?

    func run() async throws {
        let (_, value) = try await fetchJSON(options, "/services")
        var services = ((value as? [String: Any])?["services"] as? [[String: Any]]) ?? []
        if let name {
            services = services.filter { ($0["name"] as? String) == name }
            if services.isEmpty { throw AdminClient.Failure(description: "no service named '\(name)'") }
        }
        if options.output == .json {
            let data = try JSONSerialization.data(withJSONObject: ["services": services], options: [.prettyPrinted, .sortedKeys])
            print(String(decoding: data, as: UTF8.self))
            return
        }
        var rows: [[String]] = []
        for s in services {
            for e in s["endpoints"] as? [[String: Any]] ?? [] {
                rows.append([
                    str(s["name"]), str(s["balancer"]), str(e["address"]), str(e["via"]), str(e["weight"]), str(e["state"]),
                    str(e["inFlight"]), str(e["requests"]), str(e["latencyEwmaMs"]),
                    e["returnsInSeconds"].map { "\(str($0))s" } ?? "-",
                ])
            }
            if (s["endpoints"] as? [Any])?.isEmpty ?? true {
                rows.append([str(s["name"]), str(s["balancer"]), "(none)", "-", "-", "-", "-", "-", "-", "-"])
            }
        }
        printTable(["SERVICE", "BALANCER", "ENDPOINT", "VIA", "WEIGHT", "STATE", "IN-FLIGHT", "REQUESTS", "EWMA-MS", "RETURNS-IN"], rows)
    }
}

struct ConfigCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "config", abstract: "The effective configuration (JSON).")
    @OptionGroup var options: AdminOptions

    func run() async throws {
        let (raw, _) = try await fetchJSON(options, "/config")
        print(raw, terminator: "")
    }
}

struct Metrics: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Request counts, success rate and latency percentiles per service, from /metrics.")
    @OptionGroup var options: AdminOptions

    func run() async throws {
        let r = try await AdminClient.request(admin: options.admin, path: "/metrics")
        guard r.status == 200 else { throw AdminClient.Failure(description: "/metrics: HTTP \(r.status)") }
        let summary = MetricsSummary.parse(r.body)
        if options.output == .json {
            let items: [[String: Any]] = summary.map {
                [
                    "direction": $0.direction, "service": $0.service, "requests": $0.requests, "success": $0.successRate,
                    "p50": $0.p50Ms as Any, "p90": $0.p90Ms as Any, "p99": $0.p99Ms as Any,
                ]
            }
            let data = try JSONSerialization.data(withJSONObject: ["services": items], options: [.prettyPrinted, .sortedKeys])
            print(String(decoding: data, as: UTF8.self))
            return
        }
        func ms(_ v: Double?) -> String { v.map { String(format: "%.2f", $0) } ?? "-" }
        printTable(
            ["DIRECTION", "SERVICE", "REQUESTS", "SUCCESS", "P50-MS", "P90-MS", "P99-MS"],
            summary.map {
                [
                    $0.direction, $0.service, String($0.requests), String(format: "%.2f%%", $0.successRate * 100), ms($0.p50Ms),
                    ms($0.p90Ms), ms($0.p99Ms),
                ]
            })
    }
}

/// Per-service figures read back from Prometheus text.
struct MetricsSummary {
    var direction: String
    var service: String
    var requests: Int = 0
    var failures: Int = 0
    var histogram = LatencyHistogramReader()
    var successRate: Double { requests == 0 ? 1 : Double(requests - failures) / Double(requests) }
    var p50Ms: Double? { histogram.quantile(0.5).map { $0 * 1000 } }
    var p90Ms: Double? { histogram.quantile(0.9).map { $0 * 1000 } }
    var p99Ms: Double? { histogram.quantile(0.99).map { $0 * 1000 } }

    static func labels(_ s: Substring) -> [String: String] {
        var out: [String: String] = [:]
        for pair in s.split(separator: ",") {
            let kv = pair.split(separator: "=", maxSplits: 1)
            if kv.count == 2 { out[String(kv[0])] = String(kv[1].trimmingCharacters(in: ["\""])) }
        }
        return out
    }

    static func parse(_ text: String) -> [MetricsSummary] {
        var byKey: [String: MetricsSummary] = [:]
        for line in text.split(separator: "\n") where !line.hasPrefix("#") {
            guard let open = line.firstIndex(of: "{"), let close = line.lastIndex(of: "}") else { continue }
            let name = line[..<open]
            let l = labels(line[line.index(after: open)..<close])
            guard let value = Double(line[line.index(after: close)...].trimmingCharacters(in: .whitespaces)),
                let d = l["direction"], let s = l["service"]
            else { continue }
            let key = d + "|" + s
            var m = byKey[key] ?? MetricsSummary(direction: d, service: s)
            switch name {
            case "meshd_requests_total":
                m.requests += Int(value)
                if l["status_class"] == "5xx" { m.failures += Int(value) }
            case "meshd_request_duration_seconds_bucket":
                if let le = l["le"] { m.histogram.add(le: le == "+Inf" ? .infinity : Double(le) ?? .infinity, cumulative: value) }
            default: continue
            }
            byKey[key] = m
        }
        return byKey.values.filter { $0.requests > 0 || $0.histogram.total > 0 }.sorted {
            ($0.direction, $0.service) < ($1.direction, $1.service)
        }
    }
}

/// Quantiles from cumulative Prometheus buckets (linear inside a bucket, as histogram_quantile does).
struct LatencyHistogramReader {
    var buckets: [(le: Double, cumulative: Double)] = []
    var total: Double { buckets.last?.cumulative ?? 0 }

    mutating func add(le: Double, cumulative: Double) {
        buckets.append((le, cumulative))
        buckets.sort { $0.le < $1.le }
    }

    func quantile(_ q: Double) -> Double? {
        guard total > 0 else { return nil }
        let rank = q * total
        var prevLe = 0.0
        var prevCum = 0.0
        for b in buckets {
            if b.cumulative >= rank {
                if b.le == .infinity { return prevLe }
                let inBucket = b.cumulative - prevCum
                return inBucket == 0 ? b.le : prevLe + (b.le - prevLe) * (rank - prevCum) / inBucket
            }
            prevLe = b.le
            prevCum = b.cumulative
        }
        return prevLe
    }
}

struct Check: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Validate a meshd configuration file exactly as meshd does; prints every problem with key path and line.")
    @Argument(help: "Configuration file (YAML or JSON).") var file: String

    func run() async throws {
        let text: String
        do {
            // A FIFO or device named by mistake is refused rather than read forever (as meshd does).
            let type = try FileManager.default.attributesOfItem(atPath: file)[.type] as? FileAttributeType
            guard type == .typeRegular else {
                FileHandle.standardError.write(Data("meshctl: cannot read \(file): not a regular file\n".utf8))
                throw ExitCode(2)
            }
            text = try String(contentsOfFile: file, encoding: .utf8)
        } catch let exit as ExitCode {
            throw exit
        } catch {
            FileHandle.standardError.write(Data("meshctl: cannot read \(file): \(error.localizedDescription)\n".utf8))
            throw ExitCode(2)
        }
        do throws(ConfigError) {
            let c = try ConfigLoader.load(yaml: text)
            // Host names must resolve, as when meshd starts with this file.
            var unresolved: [ConfigProblem] = []
            for (si, service) in c.services.enumerated() {
                for (ei, endpoint) in service.endpoints.enumerated() where !Self.resolves(endpoint.connectAddress.host) {
                    unresolved.append(
                        ConfigProblem(
                            path: "services[\(si)].endpoints[\(ei)]",
                            reason: .invalidAddress(endpoint.connectAddress.description, "does not resolve")))
                }
            }
            if !unresolved.isEmpty { throw ConfigError(problems: unresolved) }
            print("\(file): valid (\(c.mode.rawValue) mode, \(c.services.count) services, \(c.routes.count) routes)")
        } catch {
            for p in error.problems { print("\(file): \(p)") }
            throw ExitCode(1)
        }
    }

    static func resolves(_ host: String) -> Bool {
        if IPAddress(host) != nil { return true }
        var result: UnsafeMutablePointer<addrinfo>?
        var hints = addrinfo()
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        guard getaddrinfo(host, nil, &hints, &result) == 0 else { return false }
        freeaddrinfo(result)
        return true
    }
}
