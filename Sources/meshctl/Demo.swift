import ArgumentParser
import Foundation
import MeshCore
import NIOCore
import NIOPosix

/// `meshctl demo`: one command that shows the project on this machine. It starts a backend and meshd
/// in both placements on loopback — two sidecars (the caller's outbound, the callee's inbound) and one
/// node proxy on 127.0.0.2 — sends the same open-loop workload direct, through the sidecars and through
/// the node proxy, prints the route table and the latency comparison, then stops everything. By default
/// every meshd → meshd hop is mTLS: the demo makes a CA and two workload identities (`client` and
/// `server`), the callee's sidecar and the node proxy accept only mTLS (`inbound.tls: strict`) and
/// authorize the client's identity alone; `--no-mtls` runs the same in plaintext.
struct Demo: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Start a backend and meshd in both placements on this machine, compare their hop latency, clean up.")

    @Option(help: "The meshd binary (default: MESHD_BIN, else the meshd next to this meshctl).")
    var meshd: String?

    @Option(help: "Requests per second for each target.")
    var rate: Double = 500

    @Option(help: "Seconds measured per target (after a 1 s warm-up).")
    var seconds: Int = 5

    @Option(help: "The backend's answer delay in milliseconds (a stand-in for application work).")
    var backendDelayMs: Int = 1

    @Option(name: [.short, .customLong("output")], help: "table or json (the latency report).")
    var output: OutputFormat = .table

    @Flag(inversion: .prefixedNo, help: "Run every meshd → meshd hop over mTLS with workload identities made for the demo.")
    var mtls = true

    static let trustDomain = "demo.local"
    static let clientID = "spiffe://demo.local/ns/demo/sa/client"
    static let serverID = "spiffe://demo.local/ns/demo/sa/server"

    /// A demo CA and the two workload identities, written under `dir/pki`.
    static func makeIdentities(in dir: URL) throws -> (ca: String, client: (String, String), server: (String, String)) {
        let pki = dir.appendingPathComponent("pki").path
        let root = try IdentityCommand.makeRoot(trustDomain: trustDomain, seconds: 86400)
        try IdentityCommand.write(pki, [("ca.crt", root.certPEM, 0o644)])
        var pairs: [(String, String)] = []
        for (name, id) in [("client", clientID), ("server", serverID)] {
            let leaf = try IdentityCommand.issueLeaf(
                id: SpiffeID(id)!, caCertPEM: root.certPEM, caKeyPEM: root.keyPEM, notBefore: Date().addingTimeInterval(-60),
                seconds: 86400)
            try IdentityCommand.write(pki, [("\(name).crt", leaf.certPEM, 0o644), ("\(name).key", leaf.keyPEM, 0o600)])
            pairs.append(("\(pki)/\(name).crt", "\(pki)/\(name).key"))
        }
        return ("\(pki)/ca.crt", pairs[0], pairs[1])
    }

    func meshdPath() throws -> String {
        if let meshd { return meshd }
        if let env = ProcessInfo.processInfo.environment["MESHD_BIN"] { return env }
        let me = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath()
        let sibling = me.deletingLastPathComponent().appendingPathComponent("meshd").path
        guard FileManager.default.isExecutableFile(atPath: sibling) else {
            throw ValidationError("meshd not found next to meshctl (\(sibling)); build it (swift build -c release) or pass --meshd")
        }
        return sibling
    }

    /// A port the kernel says is free now on `host`.
    static func freePort(_ host: String) throws -> Int {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw ValidationError("socket: \(errno)") }
        defer { close(fd) }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = 0
        inet_pton(AF_INET, host, &addr.sin_addr)
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard rc == 0 else { throw ValidationError("cannot bind \(host): errno \(errno) (is \(host) a loopback address here?)") }
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        withUnsafeMutablePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { _ = getsockname(fd, $0, &len) }
        }
        return Int(UInt16(bigEndian: addr.sin_port))
    }

    func run() async throws {
        let binary = try meshdPath()
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("meshctl-demo-\(getpid())")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        let backend = try await DelayBackend.start(delayNanos: UInt64(max(0, backendDelayMs)) * 1_000_000, serial: false)
        var children: [Process] = []
        func say(_ s: String) { FileHandle.standardError.write(Data((s + "\n").utf8)) }
        func cleanUp() async {
            for p in children where p.isRunning { p.terminate() }
            for p in children { p.waitUntilExit() }
            await backend.stop()
        }
        do {
            let b = backend.port
            let (aOut, aIn, aAdmin) = (try Self.freePort("127.0.0.1"), try Self.freePort("127.0.0.1"), try Self.freePort("127.0.0.1"))
            let (bOut, bIn, bAdmin) = (try Self.freePort("127.0.0.1"), try Self.freePort("127.0.0.1"), try Self.freePort("127.0.0.1"))
            let (nOut, nIn, nAdmin) = (try Self.freePort("127.0.0.2"), try Self.freePort("127.0.0.2"), try Self.freePort("127.0.0.1"))
            // With --mtls: each meshd's identity block, the callee's expected identity, strict inbound
            // and an authorization policy that admits the client alone.
            var idCaller = "", idCallee = "", idNode = "", tlsExpect = "", nodeTLSExpect = "", strict = "", authz = ""
            if mtls {
                let (ca, client, server) = try Self.makeIdentities(in: dir)
                idCaller = "identity: { trustBundle: \"\(ca)\", cert: \"\(client.0)\", key: \"\(client.1)\" }"
                idCallee = "identity: { trustBundle: \"\(ca)\", cert: \"\(server.0)\", key: \"\(server.1)\" }"
                // On the node, the one pod address (127.0.0.1) is both the caller and the backend, so that
                // pod runs as `client` at both ends of the node → node hop.
                idNode = """
                    identity:
                      trustBundle: "\(ca)"
                      workloads: [ { pods: ["127.0.0.1"], cert: "\(client.0)", key: "\(client.1)" } ]
                    """
                tlsExpect = "tls: { identity: \"\(Self.serverID)\" }"
                nodeTLSExpect = "tls: { identity: \"\(Self.clientID)\" }"
                strict = ", tls: strict"
                authz = "authorization: { defaultPolicy: deny, rules: [ { from: [\"\(Self.clientID)\"] } ] }"
            }
            let configs: [(String, String)] = [
                (
                    "sidecar-caller",
                    """
                    mode: sidecar
                    threads: 1
                    outbound: { listen: "127.0.0.1:\(aOut)" }
                    inbound: { listen: "127.0.0.1:\(aIn)", app: "127.0.0.1:\(b)" }
                    admin: { listen: "127.0.0.1:\(aAdmin)" }
                    \(idCaller)
                    services:
                      - name: demo
                        endpoints: ["127.0.0.1:\(bIn)"]      # the callee's sidecar
                        \(tlsExpect)
                    routes:
                      - name: demo
                        match: { authority: demo }
                        service: demo
                        retry: { retryOn: [connect-failure, gateway-error], attempts: 2 }
                    """
                ),
                (
                    "sidecar-callee",
                    """
                    mode: sidecar
                    threads: 1
                    outbound: { listen: "127.0.0.1:\(bOut)" }
                    inbound: { listen: "127.0.0.1:\(bIn)", app: "127.0.0.1:\(b)"\(strict) }
                    admin: { listen: "127.0.0.1:\(bAdmin)" }
                    \(idCallee)
                    \(authz)
                    """
                ),
                (
                    "node",
                    """
                    mode: node
                    nodeIP: 127.0.0.2
                    threads: 1
                    outbound: { listen: "127.0.0.2:\(nOut)" }
                    inbound: { listen: "127.0.0.2:\(nIn)"\(strict) }
                    admin: { listen: "127.0.0.1:\(nAdmin)" }
                    node: { podCIDRs: ["127.0.0.0/8"] }
                    \(idNode)
                    \(authz)
                    services:
                      - name: demo
                        endpoints: [{ address: "127.0.0.1:\(b)", via: "127.0.0.2:\(nIn)" }]   # a pod behind this node proxy
                        \(nodeTLSExpect)
                    routes:
                      - name: demo
                        match: { authority: demo }
                        service: demo
                    """
                ),
            ]
            for (name, yaml) in configs {
                let file = dir.appendingPathComponent("\(name).yaml")
                try yaml.write(to: file, atomically: true, encoding: .utf8)
                let p = Process()
                p.executableURL = URL(fileURLWithPath: binary)
                p.arguments = ["--config", file.path, "--log-level", "warning"]
                let log = dir.appendingPathComponent("\(name).log")
                _ = FileManager.default.createFile(atPath: log.path, contents: nil)
                p.standardError = try FileHandle(forWritingTo: log)
                p.standardOutput = FileHandle.nullDevice
                try p.run()
                children.append(p)
                say("started meshd \(name) (config and log in \(dir.path))")
            }
            for admin in [aAdmin, bAdmin, nAdmin] {
                var ready = false
                for _ in 0..<100 where !ready {
                    if let r = try? await AdminClient.request(admin: "127.0.0.1:\(admin)", path: "/ready", timeout: .seconds(1)),
                        r.status == 200
                    {
                        ready = true
                    } else {
                        try await Task.sleep(for: .milliseconds(100))
                    }
                }
                guard ready else { throw ValidationError("a meshd did not become ready; see the logs in \(dir.path)") }
            }
            print("Route table of the caller's sidecar (meshctl routes --admin 127.0.0.1:\(aAdmin)):")
            let routes = try Routes.parse(["--admin", "127.0.0.1:\(aAdmin)"])
            try await routes.run()
            print("")
            if mtls {
                print("mTLS on every meshd → meshd hop (identities made for the demo under \(dir.path)/pki):")
                print("  sidecar: caller's sidecar presents \(Self.clientID),")
                print("           callee's sidecar presents \(Self.serverID), strict, authorizes \(Self.clientID) only")
                print("  node:    the node proxy's pod 127.0.0.1 runs as \(Self.clientID) at both ends, strict")
                print("")
            }
            print("Hop latency, open loop at \(Int(rate)) req/s for \(seconds) s per target (backend answers after \(backendDelayMs) ms):")
            print("  direct  = client → backend")
            print("  sidecar = client → caller's sidecar (outbound) → callee's sidecar (inbound) → backend")
            print("  node    = client → node proxy (outbound) → node proxy (inbound) → backend")
            let latency = try Latency.parse([
                "--target", "direct=http://127.0.0.1:\(b)/",
                "--target", "sidecar=http://127.0.0.1:\(aOut)/",
                "--target", "node=http://127.0.0.2:\(nOut)/",
                "--authority", "demo", "--rate", String(rate), "--connections", "4",
                "--duration", "\(seconds)s", "--warmup", "1s", "-o", output.rawValue,
            ])
            try await latency.run()
            if mtls {
                // What the callees saw: handshakes completed and refused, requests authorized.
                for (name, admin) in [("callee's sidecar", bAdmin), ("node proxy", nAdmin)] {
                    let m = MetricSamples.parse(try await AdminClient.request(admin: "127.0.0.1:\(admin)", path: "/metrics").body)
                    let ok = m.sum("meshd_tls_handshakes_total", ["direction": "inbound"])
                    let refused = m.sum("meshd_tls_handshake_errors_total", ["direction": "inbound"])
                    let allowed = m.sum("meshd_authorization_total", ["decision": "allow"])
                    say("mTLS at the \(name): \(Int(ok)) handshakes, \(Int(refused)) refused, \(Int(allowed)) requests authorized")
                }
            }
            await cleanUp()
            try? FileManager.default.removeItem(at: dir)
        } catch {
            await cleanUp()
            throw error
        }
    }
}
