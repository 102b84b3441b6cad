/// The iptables rules of transparent capture (`meshd capture install|remove`): which commands run,
/// in which order, for IPv4 (`iptables`) and IPv6 (`ip6tables`). meshd runs them; what they are is
/// decided here.
///
/// - **sidecar** (in the pod's network namespace, as its init container does): outbound TCP is
///   redirected to meshd's outbound listener, except meshd's own traffic (by user ID), loopback, and
///   skipped ports and CIDRs; inbound TCP is redirected to the inbound listener, except the admin port,
///   the inbound port itself and skipped ports.
/// - **node** (in the node's network namespace): TCP from the node's pods (`podCIDR`) is sent to the
///   node meshd's outbound listener (DNAT to `nodeIP:outboundPort`), except traffic to the node IP
///   itself and skipped ports and CIDRs. meshd learns the destination the pod asked for from the
///   connection (SO_ORIGINAL_DST) and the source pod from its address.
///
/// Installing is idempotent (meshd's chains are flushed and refilled; a jump is added only when
/// missing); removing deletes every rule and chain installing added, and nothing else.
public struct CaptureRules: Equatable, Sendable {
    public enum Mode: String, Sendable, CaseIterable {
        case sidecar, node
    }

    public enum Family: String, Sendable, CaseIterable {
        case ipv4, ipv6
        /// The command that edits this family's tables.
        public var command: String { self == .ipv4 ? "iptables" : "ip6tables" }
    }

    /// One `iptables` invocation (arguments after the command).
    public enum Step: Equatable, Sendable {
        /// Must succeed.
        case run([String])
        /// Its failure is expected and harmless (creating a chain that exists, deleting one that does not).
        case tolerate([String])
        /// `check` (`-C …`) first; `add` only when it fails: a rule added once, however often installing runs.
        case ensure(check: [String], add: [String])
        /// Repeated until it fails: deletes every copy of a rule.
        case deleteAll([String])
    }

    public var mode: Mode = .sidecar
    public var proxyUID: Int = 4140
    public var outboundPort: Int = 4140
    public var inboundPort: Int = 4143
    public var adminPort: Int = 4191
    public var skipOutboundPorts: [Int] = []
    public var skipInboundPorts: [Int] = []
    public var skipCIDRs: [CIDR] = []
    /// Node mode: the node's pod address block(s).
    public var podCIDRs: [CIDR] = []
    /// Node mode: where the node meshd's outbound listener is.
    public var nodeIP: IPAddress?

    public init() {}

    static let inboundChain = "MESHD_INBOUND"
    static let outboundChain = "MESHD_OUTBOUND"
    static let nodeChain = "MESHD_NODE_OUTBOUND"

    public enum Problem: Error, Equatable, CustomStringConvertible {
        case invalid(String)
        public var description: String {
            switch self {
            case .invalid(let s): return s
            }
        }
    }

    /// The options are usable (ports in range, node mode has its pod CIDR and node IP).
    public func validate() throws(Problem) {
        for (name, port) in [("--outbound-port", outboundPort), ("--inbound-port", inboundPort), ("--admin-port", adminPort)]
        where !(1...65535).contains(port) {
            throw .invalid("\(name) \(port) is not a port (1…65535)")
        }
        for port in skipOutboundPorts + skipInboundPorts where !(1...65535).contains(port) {
            throw .invalid("skipped port \(port) is not a port (1…65535)")
        }
        if !(0...0x7fff_ffff).contains(proxyUID) { throw .invalid("--proxy-uid \(proxyUID) is not a user ID") }
        if mode == .node {
            if podCIDRs.isEmpty { throw .invalid("node mode needs --pod-cidr (the node's pod address block)") }
            if nodeIP == nil { throw .invalid("node mode needs --node-ip (where the node meshd listens)") }
        }
    }

    /// The families the rules apply to: node mode only to its node IP's family.
    public var families: [Family] {
        guard mode == .node, let nodeIP else { return Family.allCases }
        if case .v4 = nodeIP { return [.ipv4] }
        return [.ipv6]
    }

    private static func isFamily(_ cidr: CIDR, _ family: Family) -> Bool {
        if case .v4 = cidr.address { return family == .ipv4 }
        return family == .ipv6
    }

    /// The commands that install capture for `family`.
    public func install(_ family: Family) -> [Step] {
        let nat = ["-t", "nat"]
        var steps: [Step] = []
        func chain(_ name: String) {
            steps.append(.tolerate(nat + ["-N", name]))
            steps.append(.run(nat + ["-F", name]))
        }
        func add(_ name: String, _ rule: [String]) { steps.append(.run(nat + ["-A", name] + rule)) }
        let cidrs = skipCIDRs.filter { Self.isFamily($0, family) }
        switch mode {
        case .sidecar:
            chain(Self.inboundChain)
            for port in [adminPort, inboundPort] + skipInboundPorts {
                add(Self.inboundChain, ["-p", "tcp", "--dport", String(port), "-j", "RETURN"])
            }
            add(Self.inboundChain, ["-p", "tcp", "-j", "REDIRECT", "--to-ports", String(inboundPort)])
            let inboundJump = ["-p", "tcp", "-j", Self.inboundChain]
            steps.append(.ensure(check: nat + ["-C", "PREROUTING"] + inboundJump, add: nat + ["-A", "PREROUTING"] + inboundJump))

            chain(Self.outboundChain)
            add(Self.outboundChain, ["-m", "owner", "--uid-owner", String(proxyUID), "-j", "RETURN"])
            add(Self.outboundChain, ["-o", "lo", "-j", "RETURN"])
            for port in skipOutboundPorts { add(Self.outboundChain, ["-p", "tcp", "--dport", String(port), "-j", "RETURN"]) }
            for cidr in cidrs { add(Self.outboundChain, ["-d", cidr.description, "-j", "RETURN"]) }
            add(Self.outboundChain, ["-p", "tcp", "-j", "REDIRECT", "--to-ports", String(outboundPort)])
            let outboundJump = ["-p", "tcp", "-j", Self.outboundChain]
            steps.append(.ensure(check: nat + ["-C", "OUTPUT"] + outboundJump, add: nat + ["-A", "OUTPUT"] + outboundJump))
        case .node:
            guard let nodeIP else { return [] }
            chain(Self.nodeChain)
            add(Self.nodeChain, ["-d", nodeIP.description, "-j", "RETURN"])
            for port in skipOutboundPorts { add(Self.nodeChain, ["-p", "tcp", "--dport", String(port), "-j", "RETURN"]) }
            for cidr in cidrs { add(Self.nodeChain, ["-d", cidr.description, "-j", "RETURN"]) }
            let target = family == .ipv4 ? "\(nodeIP):\(outboundPort)" : "[\(nodeIP)]:\(outboundPort)"
            add(Self.nodeChain, ["-p", "tcp", "-j", "DNAT", "--to-destination", target])
            for pods in podCIDRs where Self.isFamily(pods, family) {
                let jump = ["-s", pods.description, "-p", "tcp", "-j", Self.nodeChain]
                steps.append(.ensure(check: nat + ["-C", "PREROUTING"] + jump, add: nat + ["-A", "PREROUTING"] + jump))
            }
        }
        return steps
    }

    /// The commands that remove what `install` added for `family` (whatever options it was given:
    /// every jump to meshd's chains goes, then the chains).
    public func remove(_ family: Family) -> [Step] {
        let nat = ["-t", "nat"]
        var steps: [Step] = []
        switch mode {
        case .sidecar:
            steps.append(.deleteAll(nat + ["-D", "PREROUTING", "-p", "tcp", "-j", Self.inboundChain]))
            steps.append(.deleteAll(nat + ["-D", "OUTPUT", "-p", "tcp", "-j", Self.outboundChain]))
            for name in [Self.inboundChain, Self.outboundChain] {
                steps.append(.tolerate(nat + ["-F", name]))
                steps.append(.tolerate(nat + ["-X", name]))
            }
        case .node:
            // Jumps name their pod CIDR: `meshd capture remove` finds them by listing PREROUTING
            // (`jumpsToRemove`), so it needs no options to undo any install.
            steps.append(.tolerate(nat + ["-F", Self.nodeChain]))
            steps.append(.tolerate(nat + ["-X", Self.nodeChain]))
        }
        return steps
    }

    /// Node mode: the delete commands for every PREROUTING rule that jumps to meshd's chain, from the
    /// output of `iptables -t nat -S PREROUTING`.
    public static func jumpsToRemove(listing: String) -> [[String]] {
        listing.split(separator: "\n").compactMap { line -> [String]? in
            let words = line.split(separator: " ").map(String.init)
            guard words.count > 2, words[0] == "-A", words[1] == "PREROUTING",
                let j = words.firstIndex(of: "-j"), j + 1 < words.count, words[j + 1] == nodeChain
            else { return nil }
            return ["-t", "nat", "-D"] + words.dropFirst()
        }
    }
}
