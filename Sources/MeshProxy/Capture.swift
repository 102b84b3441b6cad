import ArgumentParser
import MeshCore

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

/// `meshd capture install|remove`: transparent capture with iptables, as a sidecar's init container
/// (or the lab) runs it in a pod's network namespace, or in a node's for the node placement.
public struct CaptureCommand: ParsableCommand {
    public init() {}

    public static let configuration = CommandConfiguration(
        commandName: "meshd capture",
        abstract: "Install or remove the iptables rules that send a pod's (or a node's pods') TCP traffic through meshd.",
        discussion: """
            sidecar (in the pod's network namespace): outbound TCP → 127.0.0.1:--outbound-port, except \
            meshd's own user (--proxy-uid), loopback and skipped ports/CIDRs; inbound TCP → --inbound-port, \
            except the admin port and skipped ports. node (in the node's namespace): TCP from --pod-cidr → \
            --node-ip:--outbound-port (DNAT), except to the node IP. IPv4 and IPv6 (node: the node IP's \
            family). Needs CAP_NET_ADMIN. Installing again replaces meshd's rules; remove deletes them all.
            """,
        subcommands: [Install.self, Remove.self])

    struct Common: ParsableArguments {
        @Option(name: .long, help: "sidecar or node.")
        var mode: String = "sidecar"

        @Flag(name: .customLong("no-ipv6"), help: "Leave ip6tables alone (a kernel without IPv6).")
        var noIPv6 = false

        @Flag(name: .customLong("dry-run"), help: "Print the commands instead of running them.")
        var dryRun = false

        func rules() throws -> CaptureRules {
            var rules = CaptureRules()
            guard let m = CaptureRules.Mode(rawValue: mode) else { throw ValidationError("--mode must be sidecar or node") }
            rules.mode = m
            return rules
        }

        func families(_ rules: CaptureRules) -> [CaptureRules.Family] {
            rules.families.filter { !(noIPv6 && $0 == .ipv6) }
        }
    }

    struct Install: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Install (or refresh) the capture rules.")

        @OptionGroup var common: Common

        @Option(name: .customLong("proxy-uid"), help: "The user meshd runs as: its own traffic is not redirected.")
        var proxyUID: Int = 4140

        @Option(name: .customLong("outbound-port"), help: "meshd's outbound listener port.")
        var outboundPort: Int = 4140

        @Option(name: .customLong("inbound-port"), help: "meshd's inbound listener port (sidecar).")
        var inboundPort: Int = 4143

        @Option(name: .customLong("admin-port"), help: "meshd's admin port: inbound connections to it are not redirected (sidecar).")
        var adminPort: Int = 4191

        @Option(name: .customLong("skip-outbound-ports"), help: "Comma-separated destination ports not redirected.")
        var skipOutboundPorts: String = ""

        @Option(name: .customLong("skip-inbound-ports"), help: "Comma-separated inbound ports not redirected (sidecar).")
        var skipInboundPorts: String = ""

        @Option(name: .customLong("skip-cidrs"), help: "Comma-separated destination CIDRs not redirected.")
        var skipCIDRs: String = ""

        @Option(name: .customLong("pod-cidr"), help: "Node mode: the node's pod CIDR (comma-separated for several).")
        var podCIDR: String = ""

        @Option(name: .customLong("node-ip"), help: "Node mode: the node IP the node meshd listens on.")
        var nodeIP: String?

        func run() throws {
            var rules = try common.rules()
            rules.proxyUID = proxyUID
            rules.outboundPort = outboundPort
            rules.inboundPort = inboundPort
            rules.adminPort = adminPort
            rules.skipOutboundPorts = try Self.ports(skipOutboundPorts, "--skip-outbound-ports")
            rules.skipInboundPorts = try Self.ports(skipInboundPorts, "--skip-inbound-ports")
            rules.skipCIDRs = try Self.cidrs(skipCIDRs, "--skip-cidrs")
            rules.podCIDRs = try Self.cidrs(podCIDR, "--pod-cidr")
            if let nodeIP {
                guard let ip = IPAddress(nodeIP) else { throw ValidationError("--node-ip \(nodeIP) is not an IP address") }
                rules.nodeIP = ip
            }
            do { try rules.validate() } catch { throw ValidationError(error.description) }
            for family in common.families(rules) {
                try IPTables(family: family, dryRun: common.dryRun).apply(rules.install(family))
            }
            if !common.dryRun {
                print("capture installed (\(rules.mode.rawValue), \(common.families(rules).map(\.command).joined(separator: ", ")))")
            }
        }

        static func ports(_ text: String, _ flag: String) throws -> [Int] {
            try text.split(separator: ",").map { item in
                guard let p = Int(item.trimmingPrefix(" ")), (1...65535).contains(p) else {
                    throw ValidationError("\(flag): \(item) is not a port")
                }
                return p
            }
        }

        static func cidrs(_ text: String, _ flag: String) throws -> [CIDR] {
            try text.split(separator: ",").map { item in
                let t = item.trimmingPrefix(" ")
                if let c = CIDR(t) { return c }  // a bare address is a /32 (/128)
                throw ValidationError("\(flag): \(item) is not a CIDR")
            }
        }
    }

    struct Remove: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Remove every rule and chain `install` added.")

        @OptionGroup var common: Common

        func run() throws {
            let rules = try common.rules()
            let families =
                rules.mode == .node ? CaptureRules.Family.allCases.filter { !(common.noIPv6 && $0 == .ipv6) } : common.families(rules)
            for family in families {
                let tables = IPTables(family: family, dryRun: common.dryRun)
                if rules.mode == .node {
                    let listing = tables.output(["-t", "nat", "-S", "PREROUTING"])
                    for delete in CaptureRules.jumpsToRemove(listing: listing) { try tables.apply([.run(delete)]) }
                }
                try tables.apply(rules.remove(family))
            }
            if !common.dryRun { print("capture removed (\(rules.mode.rawValue))") }
        }
    }
}

/// Runs `iptables` / `ip6tables` (found on PATH) without a shell.
struct IPTables {
    let family: CaptureRules.Family
    let dryRun: Bool

    func apply(_ steps: [CaptureRules.Step]) throws {
        for step in steps {
            switch step {
            case .run(let args):
                let r = run(args)
                if r.status != 0 {
                    throw ValidationError("\(family.command) \(args.joined(separator: " ")) failed (exit \(r.status)): \(r.output)")
                }
            case .tolerate(let args):
                _ = run(args)
            case .ensure(let check, let add):
                if dryRun || run(check).status != 0 {
                    let r = run(add)
                    if r.status != 0 {
                        throw ValidationError("\(family.command) \(add.joined(separator: " ")) failed (exit \(r.status)): \(r.output)")
                    }
                }
            case .deleteAll(let args):
                var n = 0
                while run(args).status == 0 && !dryRun && n < 64 { n += 1 }
            }
        }
    }

    func output(_ args: [String]) -> String {
        dryRun ? "" : run(args, forceRun: true).output
    }

    /// Exit status and combined output.
    private func run(_ args: [String], forceRun: Bool = false) -> (status: Int32, output: String) {
        if dryRun && !forceRun {
            print(([family.command] + args).joined(separator: " "))
            return (0, "")
        }
        return Subprocess.run([family.command, "-w", "5"] + args)
    }
}

/// A child process without a shell (posix_spawnp): its exit status and what it wrote (stdout and
/// stderr together).
enum Subprocess {
    static func run(_ argv: [String]) -> (status: Int32, output: String) {
        var fds: [Int32] = [-1, -1]
        guard pipe(&fds) == 0 else { return (127, "pipe: \(String(cString: strerror(errno)))") }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_adddup2(&actions, fds[1], 1)
        posix_spawn_file_actions_adddup2(&actions, fds[1], 2)
        posix_spawn_file_actions_addclose(&actions, fds[0])
        var cArgs: [UnsafeMutablePointer<CChar>?] = argv.map { strdup($0) } + [nil]
        defer { for p in cArgs { free(p) } }
        var pid: pid_t = 0
        let spawned = posix_spawnp(&pid, argv[0], &actions, nil, &cArgs, environ)
        close(fds[1])
        defer { close(fds[0]) }
        if spawned != 0 { return (127, "cannot run \(argv[0]): \(String(cString: strerror(spawned)))") }
        var output: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = buffer.withUnsafeMutableBytes { read(fds[0], $0.baseAddress, $0.count) }
            if n > 0 {
                output += buffer.prefix(n)
            } else if n < 0 && errno == EINTR {
                continue
            } else {
                break
            }
        }
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        let exited = (status & 0x7f) == 0
        return (exited ? (status >> 8) & 0xff : 128 + (status & 0x7f), String(decoding: output, as: UTF8.self))
    }
}
