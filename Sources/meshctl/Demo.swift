import ArgumentParser
import Foundation
import NIOCore
import NIOPosix

/// `meshctl demo`: one command that shows the project on this machine. It starts a backend and meshd
/// in both placements on loopback — two sidecars (the caller's outbound, the callee's inbound) and one
/// node proxy on 127.0.0.2 — sends the same open-loop workload direct, through the sidecars and through
/// the node proxy, prints the route table and the latency comparison, then stops everything.
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
            let configs: [(String, String)] = [
                (
                    "sidecar-caller",
                    """
                    mode: sidecar
                    threads: 1
                    outbound: { listen: "127.0.0.1:\(aOut)" }
                    inbound: { listen: "127.0.0.1:\(aIn)", app: "127.0.0.1:\(b)" }
                    admin: { listen: "127.0.0.1:\(aAdmin)" }
                    services:
                      - name: demo
                        endpoints: ["127.0.0.1:\(bIn)"]      # the callee's sidecar
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
                    inbound: { listen: "127.0.0.1:\(bIn)", app: "127.0.0.1:\(b)" }
                    admin: { listen: "127.0.0.1:\(bAdmin)" }
                    """
                ),
                (
                    "node",
                    """
                    mode: node
                    nodeIP: 127.0.0.2
                    threads: 1
                    outbound: { listen: "127.0.0.2:\(nOut)" }
                    inbound: { listen: "127.0.0.2:\(nIn)" }
                    admin: { listen: "127.0.0.1:\(nAdmin)" }
                    node: { podCIDRs: ["127.0.0.0/8"] }
                    services:
                      - name: demo
                        endpoints: [{ address: "127.0.0.1:\(b)", via: "127.0.0.2:\(nIn)" }]   # a pod behind this node proxy
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
            await cleanUp()
            try? FileManager.default.removeItem(at: dir)
        } catch {
            await cleanUp()
            throw error
        }
    }
}
