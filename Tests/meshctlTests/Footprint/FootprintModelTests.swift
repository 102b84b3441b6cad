import Testing

@testable import meshctl

@Suite("footprint arithmetic")
struct FootprintModelTests {
    func model(nodes: Int = 3, pods: Int = 5, agents: Int, nodeAgents: Int = 0) -> FootprintModel {
        FootprintModel(input: .init(nodes: nodes, pods: pods, agents: agents, nodeAgents: nodeAgents))
    }

    @Test("the worked example: 5 pods with 2 agents is 15 containers, a third agent makes 20, two agents on 3 nodes make 16")
    func workedExample() {
        #expect(model(agents: 2).result(.sidecar).containers == 15)
        #expect(model(agents: 3).result(.sidecar).containers == 20)
        #expect(model(nodes: 3, agents: 3, nodeAgents: 2).result(.hybrid).containers == 16)
    }

    @Test("container formulas: sidecar P(1+k), node P + nk, hybrid P(1+k-m) + nm")
    func formulas() {
        for n in 1...4 {
            for p in 0...12 {
                for k in 1...4 {
                    for m in 0...k {
                        let r = model(nodes: n, pods: p, agents: k, nodeAgents: m)
                        #expect(r.result(.sidecar).containers == p * (1 + k))
                        #expect(r.result(.node).containers == p + n * k)
                        #expect(r.result(.hybrid).containers == p * (1 + k - m) + n * m)
                        // m = 0 is the sidecar placement, m = k the node placement.
                        if m == 0 { #expect(r.result(.hybrid).containers == r.result(.sidecar).containers) }
                        if m == k { #expect(r.result(.hybrid).containers == r.result(.node).containers) }
                        for placement in FootprintModel.Placement.allCases {
                            #expect(r.result(placement).agentContainers == r.result(placement).containers - p)
                        }
                    }
                }
            }
        }
    }

    @Test("memory: every agent container is charged one meshd's RSS; defaults are 19 MiB and 0.033 CPU-s per 1000 requests")
    func memory() {
        let r = model(nodes: 3, pods: 5, agents: 3, nodeAgents: 2)
        #expect(FootprintModel.defaultRSSBytes == 19 * 1024 * 1024)
        #expect(FootprintModel.defaultCPUSecondsPer1000 == 0.033)
        #expect(r.result(.sidecar).memoryMiB == 15 * 19)
        #expect(r.result(.node).memoryMiB == 9 * 19)
        #expect(r.result(.hybrid).memoryMiB == 11 * 19)
    }

    @Test("CPU follows the requests: the same total in every placement, spread over the meshd instances")
    func cpu() {
        var input = FootprintModel.Input(nodes: 4, pods: 20, agents: 2, nodeAgents: 1)
        input.requestsPerSecond = 5000
        input.cpuSecondsPer1000Requests = 0.04
        let m = FootprintModel(input: input)
        // 5000 req/s × 2 proxies × 0.04 s / 1000 = 0.4 cores.
        for r in m.results { #expect(abs(r.cpuCores - 0.4) < 1e-12) }
        #expect(m.result(.sidecar).proxies == 20)
        #expect(m.result(.node).proxies == 4)
        #expect(m.result(.hybrid).proxies == 20)  // meshd stays in the pod while m < k
        #expect(abs(m.result(.node).cpuCoresPerProxy - 0.1) < 1e-12)
        #expect(abs(m.result(.sidecar).cpuCoresPerProxy - 0.02) < 1e-12)
        input.nodeAgents = 2
        #expect(FootprintModel(input: input).result(.hybrid).proxies == 4)  // m = k: meshd moved too
    }

    @Test("bad input is named")
    func validation() {
        #expect(FootprintModel.Input(nodes: 3, pods: 5, agents: 3, nodeAgents: 2).problems.isEmpty)
        #expect(FootprintModel.Input(nodes: 0, pods: 5, agents: 3, nodeAgents: 2).problems == ["--nodes must be at least 1"])
        #expect(FootprintModel.Input(nodes: 3, pods: 5, agents: 2, nodeAgents: 3).problems.first?.contains("--node-agents") == true)
        #expect(FootprintModel.Input(nodes: 3, pods: -1, agents: 2, nodeAgents: 0).problems.first?.contains("--pods") == true)
        #expect(FootprintModel.Input(nodes: 3, pods: 5, agents: 0, nodeAgents: 0).problems.first?.contains("--agents") == true)
    }

    @Test("meshd's own figures from /metrics, and CPU per 1000 requests between two samples")
    func processFigures() {
        let text = """
            # TYPE meshd_requests_total counter
            meshd_requests_total{direction="outbound",service="web",status_class="2xx"} 3000
            meshd_requests_total{direction="outbound",service="web",status_class="5xx"} 1000
            meshd_requests_total{direction="inbound",service="local",status_class="2xx"} 1000
            # TYPE process_resident_memory_bytes gauge
            process_resident_memory_bytes 20971520
            # TYPE process_cpu_seconds_total counter
            process_cpu_seconds_total 0.25
            """
        let f = ProcessFigures.parse(text)
        #expect(f.rssBytes == 20_971_520)
        #expect(f.cpuSeconds == 0.25)
        #expect(f.requests == 5000)
        #expect(ProcessFigures.cpuPer1000(from: nil, to: f) == 0.05)
        let before = ProcessFigures(rssBytes: 1, cpuSeconds: 0.05, requests: 1000)
        #expect(abs(ProcessFigures.cpuPer1000(from: before, to: f)! - 0.05) < 1e-12)
        #expect(ProcessFigures.cpuPer1000(from: f, to: f) == nil)  // no request in between
    }
}
