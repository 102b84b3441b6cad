/// Where a node proxy's inbound listener may forward a request: the pod named in `x-meshd-dst`, when
/// it is one of this node's pods and not meshd itself.
///
/// The rules, in order (each refusal is a `403 destination-not-allowed`):
/// 1. the header must be present and an `IP:PORT` literal (no host names: nothing is resolved);
/// 2. the unspecified (`0.0.0.0`, `::`) and multicast addresses are never a pod (connecting to
///    `0.0.0.0` reaches the host itself);
/// 3. the address must lie in `node.podCIDRs`; with no pod CIDRs configured nothing is forwarded;
/// 4. loopback and link-local addresses are forwarded only when a pod CIDR lies inside that block
///    (`127.0.0.0/8`, `127.0.0.4/32`: tests on one machine) — a wide CIDR such as `0.0.0.0/0` that merely
///    contains them does not open them;
/// 5. never one of meshd's own listeners (outbound, inbound, admin, TCP services): an address equal to
///    a listener's, or any loopback, unspecified or node address on the port of a listener bound to
///    the unspecified address.
public struct NodeInboundPolicy: Sendable, Equatable {
    public enum Refusal: String, Error, Sendable, Equatable {
        case missing = "no x-meshd-dst header"
        case malformed = "x-meshd-dst is not an IP:PORT address"
        case noPodCIDRs = "node.podCIDRs is empty: this node proxy forwards to no pod"
        case notAPod = "x-meshd-dst is outside node.podCIDRs"
        case specialAddress = "x-meshd-dst is a loopback, link-local, unspecified or multicast address not named by node.podCIDRs"
        case ownListener = "x-meshd-dst names one of meshd's own listeners"
    }

    public let podCIDRs: [CIDR]
    /// meshd's listening addresses (as bound: a host IP, or the unspecified address).
    public let listeners: [HostPort]
    /// The node's host IP, which reaches a listener bound to the unspecified address.
    public let nodeIP: IPAddress?

    public init(podCIDRs: [CIDR], listeners: [HostPort], nodeIP: IPAddress?) {
        self.podCIDRs = podCIDRs
        self.listeners = listeners
        self.nodeIP = nodeIP
    }

    /// The policy of a node-mode configuration: its pod CIDRs, its listeners as configured and as
    /// bound (`boundListeners`: a listener configured with port 0 gets its port from the kernel).
    public init(config: MeshConfig, boundListeners: [HostPort] = []) {
        var listeners = [config.effectiveOutboundListen, config.effectiveInboundListen, config.admin.listen]
        listeners += config.services.compactMap(\.listen)
        listeners += boundListeners
        self.init(podCIDRs: config.node.podCIDRs, listeners: listeners, nodeIP: config.nodeIP.flatMap { IPAddress($0) })
    }

    /// A pod's address and port, as `x-meshd-dst` names it.
    public struct Destination: Sendable, Equatable {
        public let address: IPAddress
        public let port: Int
    }

    /// The destination for `header` (the value of `x-meshd-dst`), or why it is refused.
    public func destination(_ header: String?) -> Result<HostPort, Refusal> {
        destinationAddress(header).map { HostPort(host: $0.address.description, port: $0.port) }
    }

    /// The same as an address, for every request a node proxy forwards: the header is read in place
    /// (`IPAddress.parseEndpoint`) and no list or string is made. The general parsers this used before
    /// (`HostPort.parse`, `IPAddress(_:)`, the address's text again) cost 22 k instructions per
    /// request (callgrind, 2026-12-05).
    public func destinationAddress(_ header: String?) -> Result<Destination, Refusal> {
        guard let header else { return .failure(.missing) }
        guard let (ip, port) = IPAddress.parseEndpoint(header) else { return .failure(.malformed) }
        if ip.isUnspecified || ip.isMulticast { return .failure(.specialAddress) }
        guard !podCIDRs.isEmpty else { return .failure(.noPodCIDRs) }
        let block = ip.specialBlock
        var inPod = false
        var namedByPod = false
        for cidr in podCIDRs where cidr.contains(ip) {
            inPod = true
            if let block, block.containsBlock(cidr) {
                namedByPod = true
                break
            }
        }
        guard inPod else { return .failure(.notAPod) }
        if block != nil && !namedByPod { return .failure(.specialAddress) }
        if isOwnListener(ip: ip, port: port) { return .failure(.ownListener) }
        return .success(Destination(address: ip, port: port))
    }

    func isOwnListener(ip: IPAddress, port: Int) -> Bool {
        for listener in listeners where listener.port == port {
            guard let bound = IPAddress(listener.host) else {
                // A host name (`localhost`): treat every loopback address as it.
                if ip.isLoopback { return true }
                continue
            }
            if bound == ip { return true }
            if bound.isUnspecified && (ip.isLoopback || ip == nodeIP) { return true }
        }
        return false
    }
}

extension IPAddress {
    /// `0.0.0.0` or `::`.
    public var isUnspecified: Bool {
        switch self {
        case .v4(let b): return b == 0
        case .v6(let hi, let lo): return hi == 0 && lo == 0
        }
    }

    /// 224.0.0.0/4, ff00::/8.
    public var isMulticast: Bool {
        switch self {
        case .v4(let b): return b >> 28 == 0xe
        case .v6(let hi, _): return hi >> 56 == 0xff
        }
    }

    /// The loopback or link-local block the address lies in (169.254.0.0/16, fe80::/10), if any.
    public var specialBlock: CIDR? {
        if isLoopback { return self == .v6(0, 1) ? CIDR.loopbackV6 : CIDR.loopbackV4 }
        switch self {
        case .v4(let b) where b >> 16 == 0xa9fe: return CIDR.linkLocalV4
        case .v6(let hi, _) where hi >> 54 == 0x3fa: return CIDR.linkLocalV6
        default: return nil
        }
    }
}

extension CIDR {
    public static let linkLocalV4 = CIDR("169.254.0.0/16")!
    public static let linkLocalV6 = CIDR("fe80::/10")!

    /// Whether every address of `other` lies in this block.
    public func containsBlock(_ other: CIDR) -> Bool {
        other.prefixLength >= prefixLength && contains(other.address)
    }
}
