/// The container and resource arithmetic of the three placements (no I/O; unit-tested).
///
/// - `sidecar`: every pod carries its k agents: `P × (1 + k)` containers.
/// - `node`: the k agents run once per node (DaemonSets): `P + n × k` containers.
/// - `hybrid`: m of the k agents move to per-node DaemonSets, the other k − m stay in every pod:
///   `P × (1 + k − m) + n × m` containers.
///
/// meshd is one of the agents. In `hybrid` it stays in the pod while at least one agent stays there
/// (m < k): the agents that typically move are log and metrics shippers, and the proxy keeps the pod's
/// identity and isolation. With m = k, hybrid is the node placement.
///
/// Resources: meshctl measures meshd only, so every agent container is charged the resident memory of
/// one meshd. CPU follows the requests, not the containers: a request crosses two proxies (the caller's
/// outbound and the callee's inbound listener) in every placement, so the mesh's total CPU at a given
/// request rate is the same for all three; what differs is how it is spread (per proxy instance).
struct FootprintModel: Sendable, Equatable {
    /// Idle RSS of one meshd, from docs/performance.md (19.1 MiB idle, 1 thread, bench/http1.sh).
    static let defaultRSSBytes: Double = 19 * 1024 * 1024
    /// meshd CPU seconds per 1000 proxied requests, from docs/performance.md (round_robin, 1 thread:
    /// 0.0340; 0.0317–0.0506 across runs); 0.033 is the figure of the quiet runs.
    static let defaultCPUSecondsPer1000: Double = 0.033
    /// Proxies a request crosses: the caller's outbound and the callee's inbound listener.
    static let proxyPassesPerRequest = 2

    struct Input: Sendable, Equatable {
        var nodes: Int
        var pods: Int
        var agents: Int
        var nodeAgents: Int
        var rssBytesPerAgent: Double = FootprintModel.defaultRSSBytes
        var cpuSecondsPer1000Requests: Double = FootprintModel.defaultCPUSecondsPer1000
        var requestsPerSecond: Double = 1000

        /// Problems with the input, one message each (empty when valid).
        var problems: [String] {
            var out: [String] = []
            if nodes < 1 { out.append("--nodes must be at least 1") }
            if pods < 0 { out.append("--pods must not be negative") }
            if agents < 1 { out.append("--agents must be at least 1 (meshd is one of them)") }
            if nodeAgents < 0 || nodeAgents > agents { out.append("--node-agents must be between 0 and --agents (\(agents))") }
            if !(rssBytesPerAgent >= 0) || !rssBytesPerAgent.isFinite { out.append("the RSS per agent must be a finite number ≥ 0") }
            if !(cpuSecondsPer1000Requests >= 0) || !cpuSecondsPer1000Requests.isFinite {
                out.append("the CPU seconds per 1000 requests must be a finite number ≥ 0")
            }
            if !(requestsPerSecond >= 0) || !requestsPerSecond.isFinite { out.append("--rps must be a finite number ≥ 0") }
            return out
        }
    }

    enum Placement: String, Sendable, CaseIterable {
        case sidecar
        case node
        case hybrid
    }

    struct Result: Sendable, Equatable {
        var placement: Placement
        /// All containers: the pods' application containers plus every agent container.
        var containers: Int
        /// Agent containers (per-pod agents plus per-node DaemonSet pods' agents).
        var agentContainers: Int
        /// meshd instances.
        var proxies: Int
        /// Resident memory of all agent containers, each charged one meshd's RSS.
        var memoryBytes: Double
        /// CPU (cores) the proxies spend at the given request rate.
        var cpuCores: Double
        /// The same, per meshd instance: what one proxy must be sized for.
        var cpuCoresPerProxy: Double
        var memoryMiB: Double { memoryBytes / 1024 / 1024 }
    }

    var input: Input

    static func containers(_ placement: Placement, nodes n: Int, pods p: Int, agents k: Int, nodeAgents m: Int) -> Int {
        switch placement {
        case .sidecar: return p * (1 + k)
        case .node: return p + n * k
        case .hybrid: return p * (1 + k - m) + n * m
        }
    }

    func result(_ placement: Placement) -> Result {
        let (n, p, k, m) = (input.nodes, input.pods, input.agents, input.nodeAgents)
        let containers = Self.containers(placement, nodes: n, pods: p, agents: k, nodeAgents: m)
        let agentContainers = containers - p
        let proxies: Int
        switch placement {
        case .sidecar: proxies = p
        case .node: proxies = n
        case .hybrid: proxies = m < k ? p : n
        }
        let cpu = input.requestsPerSecond * Double(Self.proxyPassesPerRequest) * input.cpuSecondsPer1000Requests / 1000
        return Result(
            placement: placement, containers: containers, agentContainers: agentContainers, proxies: proxies,
            memoryBytes: Double(agentContainers) * input.rssBytesPerAgent, cpuCores: cpu,
            cpuCoresPerProxy: proxies == 0 ? 0 : cpu / Double(proxies))
    }

    var results: [Result] { Placement.allCases.map(result) }
}

/// meshd's own figures read from its Prometheus text (`process_resident_memory_bytes`,
/// `process_cpu_seconds_total`, `meshd_requests_total`).
struct ProcessFigures: Sendable, Equatable {
    var rssBytes: Double?
    var cpuSeconds: Double?
    var requests: Double?

    static func parse(_ text: String) -> ProcessFigures {
        var out = ProcessFigures()
        for line in text.split(separator: "\n") where !line.hasPrefix("#") {
            let parts = line.split(separator: " ")
            guard parts.count >= 2, let value = Double(parts[parts.count - 1]) else { continue }
            let name = parts[0].prefix { $0 != "{" }
            switch name {
            case "process_resident_memory_bytes": out.rssBytes = value
            case "process_cpu_seconds_total": out.cpuSeconds = value
            case "meshd_requests_total": out.requests = (out.requests ?? 0) + value
            default: continue
            }
        }
        return out
    }

    /// CPU seconds per 1000 requests between two samples (or since start with `before` nil); nil when
    /// no request was served in between.
    static func cpuPer1000(from before: ProcessFigures?, to after: ProcessFigures) -> Double? {
        guard let cpu = after.cpuSeconds, let requests = after.requests else { return nil }
        let dCPU = cpu - (before?.cpuSeconds ?? 0)
        let dRequests = requests - (before?.requests ?? 0)
        guard dRequests > 0, dCPU >= 0 else { return nil }
        return dCPU / dRequests * 1000
    }
}
