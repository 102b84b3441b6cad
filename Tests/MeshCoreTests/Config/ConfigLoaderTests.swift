import Testing

@testable import MeshCore

@Suite("Config decoding and validation")
struct ConfigLoaderTests {
    static let full = """
        mode: sidecar
        threads: 2
        outbound: { listen: "127.0.0.1:4140" }
        inbound:  { listen: "0.0.0.0:4143", app: "127.0.0.1:8080" }
        admin:    { listen: "127.0.0.1:4191" }
        http: { maxHeaderBytes: 32768, headerReadTimeout: 5s, idleTimeout: 2m, maxConnections: 100 }
        upstream: { connectTimeout: 250ms, requestTimeout: 3s, idleTimeout: 30s, maxIdlePerEndpoint: 8 }
        drainTimeout: 10s
        accessLog: true
        services:
          - name: orders
            endpoints: ["10.0.0.7:4143", { address: "10.0.0.8:8080", via: "10.1.2.3:4143", weight: 3 }]
          - name: orders-v2
            endpoints: ["[fd00::1]:4143"]
        routes:
          - name: canary
            match: { authority: orders, pathPrefix: /api, method: post, headers: { X-Canary: "1" } }
            backends: [ { service: orders, weight: 90 }, { service: orders-v2, weight: 10 } ]
            timeout: 2s
          - match: { authority: orders }
            service: orders
        """

    @Test func decodesEveryKey() throws {
        let c = try ConfigLoader.load(yaml: Self.full)
        #expect(c.mode == .sidecar)
        #expect(c.threads == 2)
        #expect(c.effectiveOutboundListen == HostPort(host: "127.0.0.1", port: 4140))
        #expect(c.inbound.app == HostPort(host: "127.0.0.1", port: 8080))
        #expect(c.http.maxHeaderBytes == 32768)
        #expect(c.http.headerReadTimeout == .seconds(5))
        #expect(c.http.idleTimeout == .seconds(120))
        #expect(c.http.maxConnections == 100)
        #expect(c.upstream.connectTimeout == .milliseconds(250))
        #expect(c.upstream.maxIdlePerEndpoint == 8)
        #expect(c.drainTimeout == .seconds(10))
        #expect(c.accessLog)
        #expect(c.services.count == 2)
        #expect(
            c.services[0].endpoints[1]
                == EndpointConfig(
                    address: HostPort(host: "10.0.0.8", port: 8080), via: HostPort(host: "10.1.2.3", port: 4143), weight: 3))
        #expect(c.services[0].endpoints[1].connectAddress == HostPort(host: "10.1.2.3", port: 4143))
        #expect(c.services[1].endpoints[0].address.host == "fd00::1")
        #expect(c.routes[0].match.method == "POST")
        #expect(c.routes[0].match.headers == [.init(name: "x-canary", value: "1")])
        #expect(c.routes[0].backends.map(\.weight) == [90, 10])
        #expect(c.routes[0].timeout == .seconds(2))
        #expect(c.routes[1].backends == [.init(service: "orders", weight: 1)])
    }

    @Test func jsonIsAccepted() throws {
        let json = """
            {"mode": "node", "nodeIP": "10.1.2.3",
             "services": [{"name": "a", "endpoints": ["10.0.0.1:80"]}],
             "routes": [{"match": {"authority": "a"}, "service": "a"}]}
            """
        let c = try ConfigLoader.load(yaml: json)
        #expect(c.mode == .node)
        #expect(c.effectiveOutboundListen == HostPort(host: "10.1.2.3", port: 4140))
        #expect(c.effectiveInboundListen == HostPort(host: "10.1.2.3", port: 4143))
    }

    @Test func builtInDefaultIsASidecar() throws {
        let c = try ConfigLoader.builtInDefault()
        #expect(c.mode == .sidecar)
        #expect(c.effectiveOutboundListen.description == "127.0.0.1:4140")
        #expect(c.effectiveInboundListen.description == "0.0.0.0:4143")
        #expect(c.inbound.app.description == "127.0.0.1:8080")
        #expect(c.admin.listen.description == "127.0.0.1:4191")
        #expect(c.services.isEmpty && c.routes.isEmpty)
    }

    @Test func environmentOverridesThePerPodValues() throws {
        let o = ConfigLoader.Overrides.environment(["MESHD_MODE": "node", "MESHD_NODE_IP": "10.9.9.9", "MESHD_APP_PORT": "9000"])
        let c = try ConfigLoader.load(yaml: "mode: sidecar\n", overrides: o)
        #expect(c.mode == .node)
        #expect(c.nodeIP == "10.9.9.9")
        #expect(c.inbound.app.port == 9000)
        // Flags win over the environment.
        let flags = o.merging(.init(mode: "sidecar", threads: 3))
        let d = try ConfigLoader.load(yaml: "", overrides: flags)
        #expect(d.mode == .sidecar && d.threads == 3 && d.nodeIP == "10.9.9.9")
    }

    /// Each bad file gives a problem naming the key path and the line.
    @Test(
        arguments: [
            ("outbound:\n  listn: 1.2.3.4:5\n", "outbound.listn", 2, "unknown key"),
            ("services:\n  - name: a\n    endpoints: [\"10.0.0.1\"]\n", "services[0].endpoints[0]", 3, "missing ':PORT'"),
            ("services:\n  - name: a\n    endpoints: [\"10.0.0.1:99999\"]\n", "services[0].endpoints[0]", 3, "port must be"),
            ("routes:\n  - match: { authority: x }\n    service: nope\n", "routes[0].service", 3, "unknown service 'nope'"),
            ("mode: node\n", "nodeIP", 1, "missing required key"),
            ("mode: mesh\n", "mode", 1, "sidecar or node"),
            ("http:\n  headerReadTimeout: soon\n", "http.headerReadTimeout", 2, "a duration"),
            ("http:\n  maxHeaderBytes: 10\n", "http.maxHeaderBytes", 2, "an integer in"),
            ("services:\n  - endpoints: []\n", "services[0]", 2, "missing required key 'name'"),
            ("services:\n  - name: a\n  - name: a\n", "services[1].name", 3, "duplicate service"),
            ("routes:\n  - match: {}\n", "routes[0]", 2, "missing required key 'service'"),
            ("node:\n  podCIDRs: [\"10.0.0.0/33\"]\n", "node.podCIDRs[0]", 2, "address block"),
            ("threads: lots\n", "threads", 1, "an integer"),
            ("services: {}\n", "services", 1, "a list of services"),
            ("a: [1, 2\n", "", 2, "YAML syntax error"),
            ("http2:\n  initialWindowSize: 1000\n", "http2.initialWindowSize", 2, "an integer in"),
            ("http2:\n  maxStreams: 1\n", "http2.maxStreams", 2, "unknown key"),
            ("inbound:\n  appProtocol: spdy\n", "inbound.appProtocol", 2, "auto, http1, http2 or grpc"),
            ("outbound:\n  protocol: h3\n", "outbound.protocol", 2, "detect, http1, http2, grpc or tcp"),
            ("services:\n  - name: a\n    protocol: h2\n", "services[0].protocol", 3, "auto, http1, http2, grpc or tcp"),
        ] as [(String, String, Int?, String)])
    func badFilesNamePathAndLine(yaml: String, path: String, line: Int?, message: String) {
        do {
            _ = try ConfigLoader.load(yaml: yaml)
            Issue.record("expected an error for \(yaml)")
        } catch {
            let problem = error.problems.first { $0.path == path }
            #expect(problem != nil, "no problem at \(path) in \(error.problems)")
            if let problem {
                if let line { #expect(problem.line == line, "\(problem)") }
                #expect(problem.description.contains(message), "\(problem)")
            }
        }
    }

    @Test func protocolsAndHTTP2Settings() throws {
        let config = try ConfigLoader.load(
            yaml: """
                outbound: { protocol: http2 }
                inbound: { appProtocol: http1 }
                http2: { maxConcurrentStreams: 50, initialWindowSize: 1048576, maxConnectionsPerEndpoint: 2, maxResetStreams: 50, maxPrematureResets: 7 }
                services:
                  - { name: a, protocol: grpc, endpoints: ["127.0.0.1:1"] }
                  - { name: b, endpoints: ["127.0.0.1:2"] }
                """)
        #expect(config.outbound.protocol == .http2)
        #expect(config.inbound.appProtocol == .http1)
        #expect(config.http2.maxConcurrentStreams == 50)
        #expect(config.http2.initialWindowSize == 1 << 20)
        #expect(config.http2.maxConnectionsPerEndpoint == 2)
        #expect(config.http2.maxResetStreams == 50)
        #expect(config.http2.maxPrematureResets == 7)
        #expect(config.services[0].protocol == .grpc)
        #expect(config.services[1].protocol == .auto)
        let snapshot = MeshSnapshot(config: config, version: 1)
        #expect(snapshot.services[0].upstreamProtocol == .grpc)
        #expect(snapshot.services[1].upstreamProtocol == .auto)
    }

    @Test func upstreamProtocolChoice() {
        #expect(UpstreamProtocol.auto.usesHTTP2(downstreamHTTP2: true))
        #expect(!UpstreamProtocol.auto.usesHTTP2(downstreamHTTP2: false))
        #expect(!UpstreamProtocol.http1.usesHTTP2(downstreamHTTP2: true))
        #expect(UpstreamProtocol.http2.usesHTTP2(downstreamHTTP2: false))
        #expect(UpstreamProtocol.grpc.usesHTTP2(downstreamHTTP2: false))
        #expect(ServiceProtocol.tcp.upstream == nil)
    }

    @Test func allProblemsAreReportedNotOnlyTheFirst() {
        let yaml = "mode: x\nthreads: -1\nservices:\n  - name: a\n    endpoints: [\"bad\"]\n"
        do {
            _ = try ConfigLoader.load(yaml: yaml)
            Issue.record("expected errors")
        } catch {
            #expect(error.problems.count == 3)
            #expect(error.description.split(separator: "\n").count == 3)
        }
    }

    @Test func durations() {
        #expect(MeshDuration.parse("250ms") == .milliseconds(250))
        #expect(MeshDuration.parse("1.5s") == .milliseconds(1500))
        #expect(MeshDuration.parse("2m") == .seconds(120))
        #expect(MeshDuration.parse("1h") == .seconds(3600))
        #expect(MeshDuration.parse("3") == .seconds(3))
        #expect(MeshDuration.parse("-1s") == nil)
        #expect(MeshDuration.parse("fast") == nil)
        #expect(MeshDuration.milliseconds(1500).description == "1500ms")
        #expect(MeshDuration.seconds(30).description == "30s")
    }

    @Test func nodeModeDefaultsNeverMakeAnOpenProxy() throws {
        let bare = try ConfigLoader.load(yaml: "mode: node\nnodeIP: 10.1.2.3\n")
        #expect(bare.effectiveAllowedSources.allSatisfy { $0.contains(IPAddress("127.0.0.1")!) || $0.contains(IPAddress("::1")!) })
        #expect(!bare.effectiveAllowedSources.contains { $0.contains(IPAddress("10.1.2.4")!) })
        let withPods = try ConfigLoader.load(yaml: "mode: node\nnodeIP: 10.1.2.3\nnode: { podCIDRs: [10.42.1.0/24] }\n")
        #expect(withPods.effectiveAllowedSources.contains { $0.contains(IPAddress("10.42.1.17")!) })
        #expect(!withPods.effectiveAllowedSources.contains { $0.contains(IPAddress("10.42.2.17")!) })
        #expect(NodeInboundPolicy(config: withPods).destination("10.42.1.17:8080") == .success(HostPort(host: "10.42.1.17", port: 8080)))
        #expect(NodeInboundPolicy(config: withPods).destination("127.0.0.1:8080") == .failure(.notAPod))
        #expect(NodeInboundPolicy(config: bare).destination("127.0.0.1:8080") == .failure(.noPodCIDRs))
    }

    @Test func effectiveConfigRendersAsJSON() throws {
        let c = try ConfigLoader.load(yaml: Self.full)
        let text = c.json.rendered()
        #expect(text.contains("\"mode\":\"sidecar\""))
        #expect(text.contains("\"via\":\"10.1.2.3:4143\""))
        #expect(text.contains("\"headerReadTimeout\":\"5s\""))
    }
}
