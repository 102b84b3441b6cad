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
    var requests: UInt64 = 0
    /// The service and index that hold this endpoint now; nil once an update removed it (its
    /// in-flight requests finish without feeding any balancer).
    weak var service: LoopService?
    var index = 0

    /// The outlier state every loop shares for this endpoint.
    let sharedState: SharedEndpointState

    init(config: EndpointConfig, address: SocketAddress, sharedState: SharedEndpointState = SharedEndpointState()) {
        self.config = config
        self.address = address
        self.destinationHeader = config.address.description
        self.sharedState = sharedState
    }

    func started() {
        requests &+= 1
        service?.balancer.requestStarted(index)
    }

    func finished(latencyNanos: Int64?, now: Int64) {
        service?.balancer.requestFinished(index, latencyNanos: latencyNanos, now: now)
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
    func hashKey(headers: HTTPHeaders, clientIP: String) -> UInt64? {
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

/// Something that the loop's timer checks every tick (downstream connections).
protocol LoopTimed: AnyObject {
    func checkTimeouts(now: NIODeadline)
}

/// Everything one event loop owns: its copy of the current snapshot, per-service balancers and
/// counters, the upstream pool, its random generator and its connections' timers.
///
/// Confined to `eventLoop`: every method and property is used only on it (the `@unchecked Sendable`
/// is for handing the reference to that loop; `preconditionInEventLoop` guards the entry points).
final class LoopContext: @unchecked Sendable {
    let eventLoop: EventLoop
    let index: Int
    let shared: SharedRuntime
    private(set) var snapshot: ResolvedSnapshot
    private(set) var services: [LoopService] = []
    /// Inbound traffic is counted under one pseudo-service, `local`.
    private(set) var inboundService: LoopService
    /// Per-endpoint in-flight for the inbound direction (app or pod), by address.
    var rng: SplitMix64
    let pool: UpstreamPool
    private var timed: [ObjectIdentifier: LoopTimed] = [:]
    /// Per route (by index in the snapshot's route table): retry budget and rate-limit buckets.
    private(set) var routeStates: [RouteState] = []
    private var tickTask: RepeatedTask?
    var accessLog = AccessLogBuffer()
    /// Node mode inbound: which `x-meshd-dst` destinations may be forwarded to.
    private(set) var nodeInbound: NodeInboundPolicy

    init(eventLoop: EventLoop, index: Int, shared: SharedRuntime, snapshot: ResolvedSnapshot, seed: UInt64) {
        self.eventLoop = eventLoop
        self.index = index
        self.shared = shared
        self.snapshot = snapshot
        self.rng = SplitMix64(seed: seed)
        self.pool = UpstreamPool(eventLoop: eventLoop, shared: shared)
        self.accessLog.writer = shared.accessLogWriter
        self.inboundService = LoopService(
            name: "local", endpoints: [], balancer: LoadBalancer(config: BalancerConfig(), endpoints: [], seed: 0),
            metrics: shared.inboundMetrics)
        self.services = Self.makeServices(snapshot, shared: shared, previous: [], seed: seed)
        for s in services { s.keepsGauges = index == 0 }
        self.routeStates = Self.makeRouteStates(snapshot, previous: [])
        self.nodeInbound = NodeInboundPolicy(config: snapshot.config, boundListeners: shared.boundListeners)
    }

    /// The listeners' bound addresses changed (after start): the node inbound policy learns them.
    func refreshNodeInboundPolicy() {
        eventLoop.preconditionInEventLoop()
        nodeInbound = NodeInboundPolicy(config: snapshot.config, boundListeners: shared.boundListeners)
    }

    /// Route state is kept by route name across reloads when the policy is unchanged.
    static func makeRouteStates(_ snapshot: ResolvedSnapshot, previous: [RouteState]) -> [RouteState] {
        let now = Int64(NIODeadline.now().uptimeNanoseconds)
        let old = Dictionary(previous.map { ($0.name, $0) }, uniquingKeysWith: { a, _ in a })
        return zip(snapshot.mesh.routes.routes, snapshot.routes).map { r, shared in
            if let o = old[r.name], o.retry == r.retry, o.shared === shared { return o }
            return RouteState(name: r.name, retry: r.retry, rateLimit: r.rateLimit, shared: shared, now: now)
        }
    }

    /// An endpoint of a tcp service for a new connection (balanced like HTTP requests). Endpoints
    /// behind a node proxy (`via`) are not reachable as opaque TCP: they are skipped.
    func tcpTarget(service name: String) -> TCPTarget? {
        guard let s = services.first(where: { $0.name == name }) else { return nil }
        let now = Int64(NIODeadline.now().uptimeNanoseconds)
        for _ in 0..<max(1, s.endpoints.count) {
            guard let i = s.balancer.pick(hash: nil, now: now, using: &rng) else { return nil }
            let e = s.endpoints[i]
            if e.config.via != nil { continue }
            return TCPTarget(address: e.address, label: name, connectTimeout: s.connectTimeout, endpoint: e)
        }
        return nil
    }

    func applyEjection(service: String, address: String, until: Int64, times: Int) {
        for s in services where s.name == service { s.applyEjection(address: address, until: until, times: times) }
    }

    static func makeServices(_ snapshot: ResolvedSnapshot, shared: SharedRuntime, previous: [LoopService], seed: UInt64)
        -> [LoopService]
    {
        let old = Dictionary(previous.map { ($0.name, $0) }, uniquingKeysWith: { a, _ in a })
        var kept = Set<ObjectIdentifier>()
        let services = snapshot.mesh.services.map { s -> LoopService in
            let oldEndpoints = Dictionary(
                (old[s.name]?.endpoints ?? []).map { ($0.address, $0) }, uniquingKeysWith: { a, _ in a })
            let sharedService = snapshot.services[s.index]
            let endpoints = zip(s.endpoints, snapshot.connectAddresses[s.index]).map { cfg, addr -> LoopEndpoint in
                let sharedState = sharedService.endpoints[cfg.address.description] ?? SharedEndpointState()
                // Keep the endpoints that survive the update (their requests in flight point at them).
                if let e = oldEndpoints[addr], e.config == cfg, e.sharedState === sharedState { return e }
                return LoopEndpoint(config: cfg, address: addr, sharedState: sharedState)
            }
            var balancer = LoadBalancer(
                config: s.balancer, endpoints: s.endpoints, seed: seed &+ UInt64(s.index),
                selfLocality: snapshot.config.locality, locality: s.locality,
                now: Int64(NIODeadline.now().uptimeNanoseconds))
            if let o = old[s.name], o.balancer.config == s.balancer { balancer.carryLoads(from: o.balancer) }
            var outlier = OutlierDetector(config: s.outlierDetection)
            if let o = old[s.name], o.outlier.config == s.outlierDetection {
                outlier = o.outlier
                outlier.retain(addresses: Set(s.endpoints.map(\.address.description)))
            }
            let svc = LoopService(
                name: s.name, endpoints: endpoints, balancer: balancer,
                metrics: sharedService.metrics, counters: sharedService.counters, limits: s.limits,
                outlier: outlier, connectTimeout: s.connectTimeout, idleTimeout: s.idleTimeout, shared: shared)
            svc.upstreamProtocol = s.upstreamProtocol
            // Endpoints still ejected stay out of rotation in the new balancer.
            for (i, e) in s.endpoints.enumerated() where outlier.ejectedUntil(e.address.description) != nil {
                svc.balancer.setHealthy(i, false)
            }
            for (i, e) in endpoints.enumerated() {
                e.service = svc
                e.index = i
                kept.insert(ObjectIdentifier(e))
            }
            if let o = old[s.name] { svc.latency = o.latency }
            return svc
        }
        for o in previous { for e in o.endpoints where !kept.contains(ObjectIdentifier(e)) { e.service = nil } }
        return services
    }

    /// Installs a new snapshot on this loop. In-flight requests keep their `LoopEndpoint`s.
    func install(_ snapshot: ResolvedSnapshot) {
        eventLoop.preconditionInEventLoop()
        self.snapshot = snapshot
        self.nodeInbound = NodeInboundPolicy(config: snapshot.config, boundListeners: shared.boundListeners)
        self.services = Self.makeServices(snapshot, shared: shared, previous: services, seed: rng.next())
        for s in services { s.keepsGauges = index == 0 }
        self.routeStates = Self.makeRouteStates(snapshot, previous: routeStates)
        pool.configure(snapshot.config.upstream)
        // Idle connections to endpoints that left every service are closed; busy ones finish first.
        var addresses = Set(snapshot.connectAddresses.joined())
        addresses.insert(snapshot.appAddress)
        pool.closeIdle(except: addresses, keepAnyInboundTarget: snapshot.config.mode == .node)
    }

    func start() {
        pool.configure(snapshot.config.upstream)
        tickTask = eventLoop.scheduleRepeatedTask(initialDelay: .milliseconds(100), delay: .milliseconds(100)) {
            [self] _ in
            self.tick()
        }
    }

    func stop() {
        tickTask?.cancel()
        tickTask = nil
        pool.closeAll()
        accessLog.flush()
    }

    func register(_ t: LoopTimed) { timed[ObjectIdentifier(t)] = t }
    func unregister(_ t: LoopTimed) { timed.removeValue(forKey: ObjectIdentifier(t)) }

    /// Every 100 ms: connection timeouts, pool idle expiry, access-log flush.
    private func tick() {
        let now = NIODeadline.now()
        for t in timed.values { t.checkTimeouts(now: now) }
        let nanos = Int64(now.uptimeNanoseconds)
        for s in services { s.expireEjections(now: nanos) }
        pool.sweep(now: now)
        accessLog.flush()
    }

    /// A copy of this loop's service and endpoint state, for `/services` and `/metrics`.
    func report() -> LoopReport {
        let now = Int64(NIODeadline.now().uptimeNanoseconds)
        return LoopReport(
            version: snapshot.mesh.version,
            services: services.map { s in
                LoopReport.Service(
                    name: s.name, latency: s.latency,
                    endpoints: s.endpoints.enumerated().map { i, e in
                        .init(
                            address: e.config.address.description, inFlight: s.balancer.loads[i].inFlight,
                            requests: e.requests,
                            ewmaNanos: s.balancer.loads[i].ewmaNanos.map { _ in s.balancer.cost(i, now: now) },
                            eligible: s.balancer.eligible[i], healthy: s.balancer.healthy[i],
                            ejectedUntil: s.outlier.ejectedUntil(e.config.address.description))
                    })
            },
            inboundLatency: inboundService.latency,
            upstreamIdle: pool.idleCount)
    }
}

/// A route's per-loop state: retry budget and rate-limit buckets (this loop's share of the rate).
/// A route as one event loop sees it: its retry policy, the ratio part of its retry budget (this
/// loop's requests and retries: the ratio holds for the sum), and the state every loop shares —
/// the rate limit and the budget's per-second minimum (`SharedRouteState`).
final class RouteState {
    let name: String
    let retry: RetryPolicy
    let rateLimit: RateLimitConfig?
    let shared: SharedRouteState
    var budget: RetryBudget
    /// Whether requests must be kept for replay: retries on a response outcome are possible.
    let keepsReplay: Bool

    init(name: String, retry: RetryPolicy, rateLimit: RateLimitConfig?, shared: SharedRouteState, now: Int64) {
        self.name = name
        self.retry = retry
        self.rateLimit = rateLimit
        self.shared = shared
        var ratioOnly = retry.budget
        ratioOnly.minPerSecond = 0
        self.budget = RetryBudget(config: ratioOnly, now: now)
        self.keepsReplay = retry.needsReplay
    }

    /// nil when a request from `source` is allowed, else seconds to wait (`retry-after`).
    func admit(source: String, now: Int64) -> Int? {
        rateLimit == nil ? nil : shared.admit(source: source, now: now)
    }

    /// Whether a retry may be sent now (counted if so): within the ratio of this loop's requests, or
    /// from the per-second minimum shared by every loop.
    func tryRetry(now: Int64) -> Bool {
        budget.tryRetry(now: now) || shared.takeRetryMinimum(now: now)
    }
}

struct LoopReport: Sendable {
    struct Endpoint: Sendable {
        var address: String
        var inFlight: Int
        var requests: UInt64
        /// Peak-EWMA latency now, when observed.
        var ewmaNanos: Double?
        var eligible: Bool
        var healthy: Bool
        /// Uptime nanoseconds when an ejection ends.
        var ejectedUntil: Int64?
    }
    struct Service: Sendable {
        var name: String
        var latency: LatencyHistogram
        var endpoints: [Endpoint]
    }
    var version: Int
    var services: [Service]
    var inboundLatency: LatencyHistogram
    var upstreamIdle: Int
}

/// Access-log lines buffered per loop and written in one call per tick (or when 64 KiB is buffered).
#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#elseif canImport(Darwin)
    import Darwin
#endif
