import MeshCore
import NIOCore

/// A `MeshSnapshot` plus the socket addresses of its endpoints, resolved once on the control side
/// (never on an event loop) when the snapshot is built.
final class ResolvedSnapshot: Sendable {
    let mesh: MeshSnapshot
    /// [service][endpoint] → where to connect.
    let connectAddresses: [[SocketAddress]]
    /// Sidecar inbound: the local application.
    let appAddress: SocketAddress

    init(mesh: MeshSnapshot, connectAddresses: [[SocketAddress]], appAddress: SocketAddress) {
        self.mesh = mesh
        self.connectAddresses = connectAddresses
        self.appAddress = appAddress
    }

    var config: MeshConfig { mesh.config }

    /// Resolves every endpoint; host names are looked up here, off the event loops. A name that does
    /// not resolve makes the whole snapshot invalid (the running config keeps serving).
    static func resolve(_ config: MeshConfig, version: Int) throws(ConfigError) -> ResolvedSnapshot {
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
        return ResolvedSnapshot(mesh: mesh, connectAddresses: all, appAddress: app!)
    }

    static func socketAddress(_ hp: HostPort) throws -> SocketAddress {
        if IPAddress(hp.host) != nil {
            return try SocketAddress(ipAddress: hp.host, port: hp.port)
        }
        return try SocketAddress.makeAddressResolvingHost(hp.host, port: hp.port)
    }
}
