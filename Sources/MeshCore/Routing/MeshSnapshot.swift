/// An immutable, versioned view of everything a request needs: the config, the compiled route table
/// and the services with their endpoints. Published atomically on reload; work in flight keeps the
/// snapshot it started with.
public final class MeshSnapshot: Sendable {
    public struct Service: Sendable {
        public let index: Int
        public let name: String
        public let endpoints: [EndpointConfig]
        public let balancer: BalancerConfig
        public let locality: LocalityPreference?
        public let limits: CircuitBreakerLimits
        public let outlierDetection: OutlierDetector.Config
        public let connectTimeout: MeshDuration
        public let idleTimeout: MeshDuration
        /// The HTTP version to its endpoints (`auto` keeps the request's).
        public let upstreamProtocol: UpstreamProtocol
    }

    public let version: Int
    public let config: MeshConfig
    public let routes: RouteTable
    public let services: [Service]
    public let serviceIndex: [String: Int]
    /// Which service an address belongs to (an endpoint's address, for capture's original destination).
    public let owners: DestinationOwners

    public init(config: MeshConfig, version: Int) {
        self.version = version
        self.config = config
        var index: [String: Int] = [:]
        var services: [Service] = []
        for s in config.services {
            index[s.name] = services.count
            services.append(
                Service(
                    index: services.count, name: s.name, endpoints: s.endpoints, balancer: s.balancer, locality: s.locality,
                    limits: s.limits, outlierDetection: s.outlierDetection,
                    connectTimeout: s.connectTimeout ?? config.upstream.connectTimeout,
                    idleTimeout: s.idleTimeout ?? config.upstream.idleTimeout,
                    upstreamProtocol: s.protocol.upstream ?? .auto))
        }
        self.services = services
        self.serviceIndex = index
        self.routes = RouteTable(routes: config.routes, serviceIndex: index, defaultTimeout: config.upstream.requestTimeout)
        self.owners = DestinationOwners(services: config.services)
    }
}

/// Endpoint addresses → the service they belong to (the first service listing one, in config order).
public struct DestinationOwners: Sendable, Equatable {
    private var byAddress: [IPPort: Int] = [:]

    struct IPPort: Hashable, Sendable {
        var ip: IPAddress
        var port: Int
    }

    public init(services: [ServiceConfig]) {
        for (i, service) in services.enumerated() {
            for e in service.endpoints {
                guard let ip = IPAddress(e.address.host) else { continue }
                let key = IPPort(ip: ip, port: e.address.port)
                if byAddress[key] == nil { byAddress[key] = i }
            }
        }
    }

    /// The index of the service with an endpoint at `ip`:`port`, if any.
    public func owner(ip: String, port: Int) -> Int? {
        guard let address = IPAddress(ip) else { return nil }
        return byAddress[IPPort(ip: address, port: port)]
    }
}
