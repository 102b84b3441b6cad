import MeshCore
import NIOCore

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

/// A `MeshSnapshot` plus the socket addresses of its endpoints, resolved once on the control side
/// (never on an event loop) when the snapshot is built.
final class ResolvedSnapshot: Sendable {
    let mesh: MeshSnapshot
    /// [service][endpoint] → where to connect.
    let connectAddresses: [[SocketAddress]]
    /// Sidecar inbound: the local application.
    let appAddress: SocketAddress
    /// Per service (same index as `mesh.services`): what every loop shares about it.
    let services: [SharedServiceState]
    /// Per route (same index as `mesh.routes.routes`): rate limits and retry minimums, shared.
    let routes: [SharedRouteState]

    init(
        mesh: MeshSnapshot, connectAddresses: [[SocketAddress]], appAddress: SocketAddress, services: [SharedServiceState],
        routes: [SharedRouteState]
    ) {
        self.mesh = mesh
        self.connectAddresses = connectAddresses
        self.appAddress = appAddress
        self.services = services
        self.routes = routes
    }

    var config: MeshConfig { mesh.config }

    /// Resolves every endpoint; host names are looked up here, off the event loops. A name that does
    /// not resolve makes the whole snapshot invalid (the running config keeps serving).
    /// Shared per-service and per-route state is made here too (on the control side), reusing
    /// `previous`'s by name so counters, limits and ejections carry over a reload.
    static func resolve(
        _ config: MeshConfig, version: Int, previous: ResolvedSnapshot? = nil
    ) throws(ConfigError) -> ResolvedSnapshot {
        let mesh = MeshSnapshot(config: config, version: version)
        var problems: [ConfigProblem] = []
        var all: [[SocketAddress]] = []
        for (si, service) in mesh.services.enumerated() {
            var addrs: [SocketAddress] = []
            for (ei, endpoint) in service.endpoints.enumerated() {
                do {
                    addrs.append(try socketAddress(endpoint.connectAddress))
                } catch {
                    problems.append(
                        ConfigProblem(
                            path: "services[\(si)].endpoints[\(ei)]",
                            reason: .invalidAddress(endpoint.connectAddress.description, "does not resolve: \(error)")))
                }
            }
            all.append(addrs)
        }
        var app = try? socketAddress(config.inbound.app)
        if app == nil {
            problems.append(ConfigProblem(path: "inbound.app", reason: .invalidAddress(config.inbound.app.description, "does not resolve")))
            app = try? SocketAddress(ipAddress: "127.0.0.1", port: 8080)
        }
        if !problems.isEmpty { throw ConfigError(problems: problems) }
        let oldServices = Dictionary((previous?.services ?? []).map { ($0.name, $0) }, uniquingKeysWith: { a, _ in a })
        let services = mesh.services.map { s in
            SharedServiceState(
                name: s.name, addresses: s.endpoints.map(\.address.description), previous: oldServices[s.name])
        }
        let oldRoutes = Dictionary((previous?.routes ?? []).map { ($0.name, $0) }, uniquingKeysWith: { a, _ in a })
        let routes = mesh.routes.routes.map { r -> SharedRouteState in
            let perSource = r.rateLimit?.perSource ?? (config.mode == .node)
            let key = SharedRouteState.RouteConfigKey(
                rateLimit: r.rateLimit, perSource: perSource, retryMinimum: r.retry.budget.minPerSecond)
            if let old = oldRoutes[r.name], old.policy == key { return old }
            return SharedRouteState(
                name: r.name, rateLimit: r.rateLimit, perSource: perSource, retryMinimumPerSecond: r.retry.budget.minPerSecond,
                metrics: oldRoutes[r.name]?.metrics)
        }
        return ResolvedSnapshot(mesh: mesh, connectAddresses: all, appAddress: app!, services: services, routes: routes)
    }

    static func socketAddress(_ hp: HostPort) throws -> SocketAddress {
        if IPAddress(hp.host) != nil {
            return try SocketAddress(ipAddress: hp.host, port: hp.port)
        }
        return try SocketAddress.makeAddressResolvingHost(hp.host, port: hp.port)
    }
}

extension SocketAddress {
    /// The socket address of an IP literal MeshCore parsed, built from its numbers (no text is parsed
    /// again, no `inet_pton`): a node proxy makes one per request, from `x-meshd-dst`.
    init(_ address: IPAddress, port: Int) {
        switch address {
        case .v4(let bits):
            var sin = sockaddr_in()
            sin.sin_family = sa_family_t(AF_INET)
            sin.sin_port = in_port_t(UInt16(truncatingIfNeeded: port)).bigEndian
            sin.sin_addr.s_addr = bits.bigEndian
            self.init(sin, host: "")
        case .v6(let hi, let lo):
            var sin6 = sockaddr_in6()
            sin6.sin6_family = sa_family_t(AF_INET6)
            sin6.sin6_port = in_port_t(UInt16(truncatingIfNeeded: port)).bigEndian
            withUnsafeMutableBytes(of: &sin6.sin6_addr) { raw in
                withUnsafeBytes(of: hi.bigEndian) { raw.baseAddress!.copyMemory(from: $0.baseAddress!, byteCount: 8) }
                withUnsafeBytes(of: lo.bigEndian) { (raw.baseAddress! + 8).copyMemory(from: $0.baseAddress!, byteCount: 8) }
            }
            self.init(sin6, host: "")
        }
    }
}
