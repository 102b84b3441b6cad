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
    }
}
