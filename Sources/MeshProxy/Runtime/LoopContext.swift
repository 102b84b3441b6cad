import CoreMetrics
import Logging
import MeshCore
import NIOCore
import NIOHTTP1

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#elseif canImport(Darwin)
    import Darwin
#endif

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
    /// Finished requests for the taps (`GET /tap`), handed over every tick.
    private var tapEvents: [TapEvent] = []
    /// Node mode, outbound: requests per source pod since start (at most `maxTrackedSources`; later
    /// sources count in `sourceTotal` only), for `meshd_source_requests_total`.
    private(set) var sourceCounts: [String: UInt64] = [:]
    private(set) var sourceTotal: UInt64 = 0
    static let maxTrackedSources = 4096

    /// Flushes held while a read is in progress on this loop (`FlushBatch`).
    let flushes: FlushBatch
    /// `IP:PORT` texts of upstream addresses for the access log, which names every request's upstream
    /// (making the text is `inet_ntop` and an interpolation, about 3 k instructions). Bound: at most
    /// `maxAddressTexts`; full, it starts over.
    private var addressTexts: [SocketAddress: String] = [:]
    static let maxAddressTexts = 4096

    func addressText(_ address: SocketAddress) -> String {
        if let text = addressTexts[address] { return text }
        if addressTexts.count >= Self.maxAddressTexts { addressTexts.removeAll(keepingCapacity: true) }
        let text = MeshRuntime.hostPort(address)
        addressTexts[address] = text
        return text
    }

    func countSource(_ source: String) {
        sourceTotal &+= 1
        if let c = sourceCounts[source] {
            sourceCounts[source] = c &+ 1
        } else if sourceCounts.count < Self.maxTrackedSources {
            sourceCounts[source] = 1
        }
    }

    /// A finished request for the taps; past `TapHub.perLoopTickBound` in one tick it is dropped.
    func tap(_ event: TapEvent) {
        guard tapEvents.count < TapHub.perLoopTickBound else {
            shared.tap.dropped.increment()
            return
        }
        tapEvents.append(event)
    }
    /// Node mode inbound: which `x-meshd-dst` destinations may be forwarded to.
    private(set) var nodeInbound: NodeInboundPolicy
    /// The workload identities in force (nil: no `identity` configured); replaced as a whole on rotation.
    private(set) var identity: IdentityMaterial?
    /// Upstream pools of mTLS connections, one per (identity generation, credential presented, identity
    /// expected, server name): connections in one pool are interchangeable.
    private var tlsPools: [TLSPoolKey: UpstreamPool] = [:]
    /// `meshd_authorization_total` handles by label, cached on the loop (no lock per request).
    private var authorizationCounters: [String: CoreMetrics.Counter] = [:]

    func authorizationCounter(_ d: AuthorizationPolicy.Decision) -> CoreMetrics.Counter {
        let key = (d.allowed ? "allow|" : "deny|") + d.ruleLabel
        if let c = authorizationCounters[key] { return c }
        let c = shared.authorizationCounter(d)
        authorizationCounters[key] = c
        return c
    }

    struct TLSPoolKey: Hashable {
        let generation: Int
        /// -1: the local identity; else the node workload's index.
        let credential: Int
        let expected: IdentityPattern
        let serverName: String?
    }

    init(eventLoop: EventLoop, index: Int, shared: SharedRuntime, snapshot: ResolvedSnapshot, seed: UInt64) {
        self.eventLoop = eventLoop
        self.index = index
        self.shared = shared
        self.snapshot = snapshot
        self.rng = SplitMix64(seed: seed)
        self.flushes = FlushBatch(eventLoop: eventLoop)
        self.pool = UpstreamPool(eventLoop: eventLoop, shared: shared, flushes: flushes)
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
            let state = RouteState(name: r.name, retry: r.retry, rateLimit: r.rateLimit, shared: shared, now: now)
            if let o = old[r.name] { state.latency = o.latency }  // the route's series go on across a reload
            return state
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
        let tlsByName = Dictionary(snapshot.config.services.map { ($0.name, $0.tls) }, uniquingKeysWith: { a, _ in a })
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
            svc.tls = tlsByName[s.name] ?? nil
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
        // Idle connections to endpoints that left every service are closed; busy ones finish first.
        var addresses = Set(snapshot.connectAddresses.joined())
        addresses.insert(snapshot.appAddress)
        for p in allPools {
            p.configure(snapshot.config.upstream)
            p.closeIdle(except: addresses, keepAnyInboundTarget: snapshot.config.mode == .node && p.tls == nil)
        }
    }

    /// New identity material (start, or the files changed): new connections use it; pools of the old
    /// one close their idle connections and are dropped (busy connections finish their exchange).
    func installIdentity(_ material: IdentityMaterial?) {
        eventLoop.preconditionInEventLoop()
        identity = material
        for (key, p) in tlsPools where key.generation != material?.generation {
            p.closeIdle(except: [], keepAnyInboundTarget: false)
            tlsPools[key] = nil
        }
    }

    enum PoolChoice {
        case pool(UpstreamPool)
        /// Node mode: the source pod runs as no identity, and the service requires mTLS.
        case noIdentity
    }

    /// The pool for a request to `endpoint` of `service` from `source` (node mode: the pod whose
    /// identity is presented): the plaintext pool, or the mTLS pool of the service's expected identity.
    func upstreamPool(service: LoopService?, endpoint: LoopEndpoint?, source: IPAddress?) -> PoolChoice {
        guard let service, service.tls != nil, let endpoint else { return .pool(pool) }
        guard let material = identity else { return .noIdentity }
        // The endpoint remembers the pool it used last: no key hashing (nor credential copies) per
        // request. Valid while the identity generation is the same, the sidecar presents its own
        // identity (node mode: same source workload) and the service is the same (see `CachedTLSPool`).
        let node = snapshot.config.mode == .node
        if let cached = endpoint.tlsPool, cached.generation == material.generation,
            cached.credential == (node ? source.flatMap { material.podWorkload[$0] } ?? -2 : -1),
            cached.service === service
        {
            return .pool(cached.pool)
        }
        guard let tls = service.tls else { return .pool(pool) }
        let credential: WorkloadCredential
        let index: Int
        if node {
            guard let ip = source, let i = material.podWorkload[ip] else { return .noIdentity }
            credential = material.workloads[i]
            index = i
        } else {
            guard let local = material.local else { return .noIdentity }
            credential = local
            index = -1
        }
        // Behind a node proxy the server name names the pod, so the node answers as that pod's identity.
        let serverName = endpoint.config.via != nil ? IPAddress(endpoint.config.address.host).map(PodServerName.encode) : nil
        let key = TLSPoolKey(generation: material.generation, credential: index, expected: tls.identity, serverName: serverName)
        if let p = tlsPools[key] {
            endpoint.tlsPool = .init(generation: material.generation, credential: index, service: service, pool: p)
            return .pool(p)
        }
        let p = UpstreamPool(
            eventLoop: eventLoop, shared: shared,
            tls: UpstreamTLS(
                credential: credential, roots: material.roots, expected: tls.identity, serverName: serverName,
                handshakeTimeout: .nanoseconds(snapshot.config.identity?.handshakeTimeout.nanoseconds ?? 10_000_000_000)),
            flushes: flushes)
        p.configure(snapshot.config.upstream)
        tlsPools[key] = p
        endpoint.tlsPool = .init(generation: material.generation, credential: index, service: service, pool: p)
        return .pool(p)
    }

    /// Every pool of this loop (plaintext and mTLS).
    var allPools: [UpstreamPool] { [pool] + Array(tlsPools.values) }

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
        for p in allPools { p.closeAll() }
        accessLog.flush()
    }

    func register(_ t: LoopTimed) { timed[ObjectIdentifier(t)] = t }
    func unregister(_ t: LoopTimed) { timed.removeValue(forKey: ObjectIdentifier(t)) }

    /// Every 100 ms: connection timeouts, pool idle expiry, access-log flush.
    private func tick() {
        flushes.settle(logger: shared.logger)
        let now = NIODeadline.now()
        for t in timed.values { t.checkTimeouts(now: now) }
        let nanos = Int64(now.uptimeNanoseconds)
        for s in services { s.expireEjections(now: nanos) }
        pool.sweep(now: now)
        for p in tlsPools.values { p.sweep(now: now) }
        accessLog.flush()
        if !tapEvents.isEmpty {
            shared.tap.publish(tapEvents)
            tapEvents.removeAll(keepingCapacity: true)
        }
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
            routes: routeStates.map { ($0.name, $0.latency) },
            sourceCounts: sourceCounts, sourceTotal: sourceTotal,
            inboundLatency: inboundService.latency,
            upstreamIdle: allPools.reduce(0) { $0 + $1.idleCount })
    }
}
