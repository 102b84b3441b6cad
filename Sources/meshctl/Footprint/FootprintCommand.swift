import ArgumentParser
import Foundation
import MeshCore

struct Footprint: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Containers, memory and CPU of the sidecar, node and hybrid placements.",
        discussion: """
            Containers: sidecar P × (1 + k); node P + n × k; hybrid P × (1 + k − m) + n × m, for P pods (--pods, \
            in total), n nodes, k agents per pod (--agents, meshd included) and m of them moved to per-node \
            DaemonSets (--node-agents). Every agent container is charged one meshd's resident memory; CPU is \
            the proxies' CPU at --rps requests per second (each request crosses two proxies). Per-meshd figures \
            come from a running meshd (--admin) or default to the benchmark's: 19 MiB idle RSS and 0.033 CPU \
            seconds per 1000 requests (docs/performance.md).
            """)

    @Option(help: "Nodes in the cluster (n).") var nodes: Int
    @Option(help: "Pods in the cluster, in total (P).") var pods: Int
    @Option(help: "Agents per pod in the sidecar placement, meshd included (k).") var agents: Int
    @Option(name: .customLong("node-agents"), help: "How many of the k agents move to per-node DaemonSets in the hybrid placement (m).")
    var nodeAgents: Int = 1
    @Option(help: "Requests per second through the mesh, cluster-wide, for the CPU figures.") var rps: Double = 1000
    @Option(help: "Read RSS and CPU per request from this running meshd's admin API (HOST:PORT) instead of the defaults.")
    var admin: String?
    @Option(
        help: ArgumentHelp(
            "With --admin: measure CPU per request over this interval (two /metrics samples) instead of since meshd started.",
            valueName: "duration"))
    var sample: DurationArgument?
    @Option(name: .customLong("rss-mib"), help: "RSS per agent in MiB (overrides the default and --admin).") var rssMiB: Double?
    @Option(name: .customLong("cpu-per-1000"), help: "meshd CPU seconds per 1000 requests (overrides the default and --admin).")
    var cpuPer1000: Double?
    @Option(name: [.short, .customLong("output")], help: "table or json.") var output: OutputFormat = .table

    func run() async throws {
        var input = FootprintModel.Input(nodes: nodes, pods: pods, agents: agents, nodeAgents: nodeAgents, requestsPerSecond: rps)
        var rssSource = "default: meshd idle RSS, docs/performance.md"
        var cpuSource = "default: docs/performance.md"
        if let admin {
            let first = try await Self.figures(admin: admin)
            var last = first
            var before: ProcessFigures? = nil
            if let sample {
                try await Task.sleep(nanoseconds: UInt64(sample.duration.nanoseconds))
                last = try await Self.figures(admin: admin)
                before = first
            }
            if let rss = last.rssBytes {
                input.rssBytesPerAgent = rss
                rssSource = "measured: process_resident_memory_bytes of \(admin)"
            }
            if let cpu = ProcessFigures.cpuPer1000(from: before, to: last) {
                input.cpuSecondsPer1000Requests = cpu
                cpuSource =
                    sample.map { "measured over \($0.duration) at \(admin)" } ?? "measured since start at \(admin)"
            } else {
                cpuSource = "default: \(admin) served no request\(sample == nil ? "" : " during the sample")"
            }
        }
        if let rssMiB {
            input.rssBytesPerAgent = rssMiB * 1024 * 1024
            rssSource = "--rss-mib"
        }
        if let cpuPer1000 {
            input.cpuSecondsPer1000Requests = cpuPer1000
            cpuSource = "--cpu-per-1000"
        }
        let problems = input.problems
        if !problems.isEmpty { throw ValidationError(problems.joined(separator: "; ")) }
        let model = FootprintModel(input: input)
        if output == .json {
            print(Self.json(model, rssSource: rssSource, cpuSource: cpuSource))
            return
        }
        print(
            "\(input.nodes) nodes, \(input.pods) pods, \(input.agents) agents per pod (meshd included); "
                + "hybrid moves \(input.nodeAgents) of them to DaemonSets")
        print("per agent: \(String(format: "%.1f", input.rssBytesPerAgent / 1024 / 1024)) MiB RSS (\(rssSource))")
        print(
            "meshd CPU: \(String(format: "%.4f", input.cpuSecondsPer1000Requests)) s per 1000 requests (\(cpuSource)); "
                + "\(String(format: "%g", input.requestsPerSecond)) requests/s, \(FootprintModel.proxyPassesPerRequest) proxies per request"
        )
        print("")
        printTable(
            ["PLACEMENT", "CONTAINERS", "AGENT-CONTAINERS", "MESHD", "MEMORY-MIB", "CPU-CORES", "CPU-PER-MESHD"],
            model.results.map {
                [
                    $0.placement.rawValue, String($0.containers), String($0.agentContainers), String($0.proxies),
                    String(format: "%.1f", $0.memoryMiB), String(format: "%.4f", $0.cpuCores),
                    String(format: "%.4f", $0.cpuCoresPerProxy),
                ]
            })
    }

    static func figures(admin: String) async throws -> ProcessFigures {
        let r = try await AdminClient.request(admin: admin, path: "/metrics")
        guard r.status == 200 else { throw AdminClient.Failure(description: "/metrics: HTTP \(r.status)") }
        return ProcessFigures.parse(r.body)
    }

    static func round6(_ v: Double) -> Double { (v * 1e6).rounded() / 1e6 }

    static func json(_ model: FootprintModel, rssSource: String, cpuSource: String) -> String {
        var placements: [String: Any] = [:]
        for r in model.results {
            placements[r.placement.rawValue] = [
                "containers": r.containers, "agentContainers": r.agentContainers, "meshd": r.proxies,
                "memoryBytes": Int(r.memoryBytes.rounded()), "memoryMiB": (r.memoryMiB * 10).rounded() / 10,
                "cpuCores": round6(r.cpuCores), "cpuCoresPerMeshd": round6(r.cpuCoresPerProxy),
            ]
        }
        let i = model.input
        let object: [String: Any] = [
            "input": [
                "nodes": i.nodes, "pods": i.pods, "agents": i.agents, "nodeAgents": i.nodeAgents, "rps": i.requestsPerSecond,
                "rssBytesPerAgent": Int(i.rssBytesPerAgent.rounded()), "rssSource": rssSource,
                "cpuSecondsPer1000Requests": round6(i.cpuSecondsPer1000Requests), "cpuSource": cpuSource,
                "proxiesPerRequest": FootprintModel.proxyPassesPerRequest,
            ],
            "sidecar": placements["sidecar"]!, "node": placements["node"]!, "hybrid": placements["hybrid"]!,
        ]
        let data = try! JSONSerialization.data(withJSONObject: object, options: [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes])
        return String(decoding: data, as: UTF8.self)
    }
}

/// A duration flag: `250ms`, `2s`, `1.5s`, `1m`, or a bare number of seconds (MeshCore's syntax).
struct DurationArgument: ExpressibleByArgument, CustomStringConvertible, Sendable {
    var duration: MeshDuration

    init(_ duration: MeshDuration) { self.duration = duration }

    init?(argument: String) {
        guard let d = MeshDuration.parse(argument) else { return nil }
        duration = d
    }

    var description: String { duration.description }
    var seconds: Double { Double(duration.nanoseconds) / 1e9 }
    var nanoseconds: UInt64 { UInt64(max(0, duration.nanoseconds)) }
}
