import CoreMetrics
import Logging
import MeshCore
import NIOCore
import NIOHTTP1

/// One endpoint of a service as one event loop sees it: where to connect, and where it sits in its
/// service's balancer now. A class, kept across reloads and discovery updates while the endpoint
/// stays, so a request in flight during an update reports to the balancer that now holds it.
final class LoopEndpoint {
    let config: EndpointConfig
    let address: SocketAddress
    /// `config.address` as the `x-meshd-dst` header value.
    let destinationHeader: String
    /// The endpoint is a pod behind a node proxy (`via`): requests to it name the pod in
    /// `x-meshd-dst`. Any other endpoint is the workload (or its sidecar) itself, and gets no
    /// `x-meshd-dst` (a client's is removed).
    let namesDestination: Bool
    var requests: UInt64 = 0
    /// The service and index that hold this endpoint now; nil once an update removed it (its
    /// in-flight requests finish without feeding any balancer).
    weak var service: LoopService?
    var index = 0

    /// The outlier state every loop shares for this endpoint.
    let sharedState: SharedEndpointState

    /// The mTLS pool this loop used for this endpoint last, and what chose it (identity generation,
    /// credential, and the service — a new one on every update, which may expect another peer):
    /// `LoopContext.upstreamPool` reuses it while all three still hold.
    /// (A class: reading it per request is one retain, not a copy of its fields.)
    final class CachedTLSPool {
        let generation: Int
        let credential: Int
        weak var service: LoopService?
        let pool: UpstreamPool

        init(generation: Int, credential: Int, service: LoopService, pool: UpstreamPool) {
            self.generation = generation
            self.credential = credential
            self.service = service
            self.pool = pool
        }
    }
    var tlsPool: CachedTLSPool?

    init(config: EndpointConfig, address: SocketAddress, sharedState: SharedEndpointState = SharedEndpointState()) {
        self.config = config
        self.address = address
        self.destinationHeader = config.address.description
        self.namesDestination = config.via != nil
        self.sharedState = sharedState
    }

    func started() {
        requests &+= 1
        service?.balancer.requestStarted(index)
    }

    func finished(latencyNanos: Int64?, failed: Bool = false, now: Int64) {
        service?.balancer.requestFinished(index, latencyNanos: latencyNanos, failed: failed, now: now)
    }
}

/// A service as one event loop sees it: its own balancer state (in-flight counts, latency EWMA), its
/// outlier detector, and handles on the service's shared circuit-breaker counters.
final class LoopService {
    let name: String
    let endpoints: [LoopEndpoint]
    var balancer: LoadBalancer
    let metrics: ServiceMetrics
    var latency = LatencyHistogram()
    let counters: ServiceCounters
    let limits: CircuitBreakerLimits
    var outlier: OutlierDetector
    let connectTimeout: MeshDuration
    let idleTimeout: MeshDuration
    weak var shared: SharedRuntime?
    /// Loop 0 keeps the service-wide gauges (every loop applies every ejection).
    var keepsGauges = false
    /// The HTTP version spoken to the endpoints (`services[].protocol`; inbound: `inbound.appProtocol`).
    var upstreamProtocol = UpstreamProtocol.auto
    /// `services[].tls`: the endpoints are meshd proxies reached over mTLS.
    var tls: ServiceTLSConfig?

    /// Circuit breaker: whether one more of `kind` fits the service's limits (all loops together).
    func admits(_ kind: CircuitBreakerLimits.Overflow) -> Bool {
        limits.admits(kind, current: counters.current(kind))
    }
    init(
        name: String, endpoints: [LoopEndpoint], balancer: LoadBalancer, metrics: ServiceMetrics,
        counters: ServiceCounters = ServiceCounters(), limits: CircuitBreakerLimits = CircuitBreakerLimits(),
        outlier: OutlierDetector = OutlierDetector(config: .init()), connectTimeout: MeshDuration = .seconds(1),
        idleTimeout: MeshDuration = .seconds(60), shared: SharedRuntime? = nil
    ) {
        self.name = name
        self.endpoints = endpoints
        self.balancer = balancer
        self.metrics = metrics
        self.counters = counters
        self.limits = limits
        self.outlier = outlier
        self.connectTimeout = connectTimeout
        self.idleTimeout = idleTimeout
        self.shared = shared
    }

    /// Feeds an attempt's outcome to the outlier detector. The consecutive counts are the endpoint's,
    /// shared by every loop; the loop whose outcome trips the threshold claims the ejection and
    /// broadcasts it to every loop.
    func record(_ endpoint: LoopEndpoint, _ outcome: AttemptOutcome, now: Int64) {
        guard endpoint.service === self, outlier.config.enabled else { return }
        let counts = endpoint.sharedState.count(outcome)
        // A success only resets the shared counts: nothing for this loop's detector (no string built).
        if counts.fiveXX == 0 && counts.gateway == 0 { return }
        let address = endpoint.destinationHeader  // `config.address.description`, made once
        if let action = outlier.record(address: address, consecutive: counts, total: endpoints.count, now: now),
            case .eject(let a, let until, let times) = action, endpoint.sharedState.claimEjection(until: until, now: now)
        {
            metrics.ejections.increment()
            shared?.logger.warning(
                "endpoint ejected by outlier detection",
                metadata: [
                    "service": "\(name)", "endpoint": "\(a)", "times": "\(times)",
                    "seconds": "\(Double(until - now) / 1e9)",
                ])
            shared?.broadcastEjection(service: name, address: a, until: until, times: times)
        }
    }

    /// Applies an ejection (from any loop) to this loop's balancer.
    func applyEjection(address: String, until: Int64, times: Int) {
        outlier.markEjected(address: address, until: until, times: times)
        if keepsGauges { metrics.ejected.store(outlier.ejectedCount, ordering: .relaxed) }
        for (i, e) in endpoints.enumerated() where e.config.address.description == address {
            balancer.setHealthy(i, false)
        }
    }

    /// Ends ejections that are over.
    func expireEjections(now: Int64) {
        let returned = outlier.expire(now: now)
        if keepsGauges && !returned.isEmpty { metrics.ejected.store(outlier.ejectedCount, ordering: .relaxed) }
        for address in returned {
            for (i, e) in endpoints.enumerated() where e.config.address.description == address {
                balancer.setHealthy(i, true)
                shared?.logger.info("endpoint returned from ejection", metadata: ["service": "\(name)", "endpoint": "\(address)"])
            }
        }
    }

    /// The hash key of a request for ring_hash / maglev, or nil (then the pick is weighted random).
    func hashKey(headers: some HeaderLookup, clientIP: String) -> UInt64? {
        guard balancer.config.algorithm.usesHashKey else { return nil }
        switch balancer.config.hashKey {
        case .sourceIP: return StableHash.hash(clientIP)
        case .header(let name): return headers.first(name: name).map(StableHash.hash)
        case .cookie(let name):
            for value in headers["cookie"] {
                for pair in value.split(separator: ";") {
                    let kv = pair.split(separator: "=", maxSplits: 1)
                    if kv.count == 2 && kv[0].trimmingPrefixSpaces() == name { return StableHash.hash(String(kv[1])) }
                }
            }
            return nil
        }
    }
}

extension Substring {
    fileprivate func trimmingPrefixSpaces() -> Substring {
        var s = self
        while s.first == " " { s = s.dropFirst() }
        return s
    }
}
