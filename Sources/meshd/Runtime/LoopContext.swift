import CoreMetrics
import Logging
import MeshCore
import NIOCore

/// One endpoint of a service as one event loop sees it: where to connect and how many requests this
/// loop has in flight to it. A class so a request can keep its endpoint across a config swap.
final class LoopEndpoint {
    let config: EndpointConfig
    let address: SocketAddress
    /// `config.address` as the `x-meshd-dst` header value.
    let destinationHeader: String
    var inFlight = 0
    var requests: UInt64 = 0

    init(config: EndpointConfig, address: SocketAddress) {
        self.config = config
        self.address = address
        self.destinationHeader = config.address.description
    }
}

/// A service as one event loop sees it: its own balancer state and endpoint counters.
final class LoopService {
    let name: String
    let endpoints: [LoopEndpoint]
    var balancer: Balancer
    let requestCounters: [CoreMetrics.Counter]
    var latency = LatencyHistogram()

    init(name: String, endpoints: [LoopEndpoint], balancer: Balancer, requestCounters: [CoreMetrics.Counter]) {
        self.name = name
        self.endpoints = endpoints
        self.balancer = balancer
        self.requestCounters = requestCounters
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
    private var tickTask: RepeatedTask?
    var accessLog = AccessLogBuffer()

    init(eventLoop: EventLoop, index: Int, shared: SharedRuntime, snapshot: ResolvedSnapshot, seed: UInt64) {
        self.eventLoop = eventLoop
        self.index = index
        self.shared = shared
        self.snapshot = snapshot
        self.rng = SplitMix64(seed: seed)
        self.pool = UpstreamPool(eventLoop: eventLoop, shared: shared)
        self.inboundService = LoopService(
            name: "local", endpoints: [], balancer: Balancer(kind: .roundRobin, endpoints: [], seed: 0),
            requestCounters: shared.metrics.requestCounters(direction: .inbound, service: "local"))
        self.services = Self.makeServices(snapshot, shared: shared, previous: [], seed: seed)
    }

    static func makeServices(_ snapshot: ResolvedSnapshot, shared: SharedRuntime, previous: [LoopService], seed: UInt64)
        -> [LoopService]
    {
        let old = Dictionary(previous.map { ($0.name, $0) }, uniquingKeysWith: { a, _ in a })
        return snapshot.mesh.services.map { s in
            let oldEndpoints = Dictionary(
                (old[s.name]?.endpoints ?? []).map { ($0.address, $0) }, uniquingKeysWith: { a, _ in a })
            let endpoints = zip(s.endpoints, snapshot.connectAddresses[s.index]).map { cfg, addr in
                // Keep the live counters of endpoints that survive the reload.
                if let kept = oldEndpoints[addr], kept.config == cfg { return kept }
                return LoopEndpoint(config: cfg, address: addr)
            }
            let svc = LoopService(
                name: s.name, endpoints: endpoints,
                balancer: Balancer(kind: s.balancer, endpoints: s.endpoints, seed: seed &+ UInt64(s.index)),
                requestCounters: shared.metrics.requestCounters(direction: .outbound, service: s.name))
            if let o = old[s.name] { svc.latency = o.latency }
            return svc
        }
    }

    /// Installs a new snapshot on this loop. In-flight requests keep their `LoopEndpoint`s.
    func install(_ snapshot: ResolvedSnapshot) {
        eventLoop.preconditionInEventLoop()
        self.snapshot = snapshot
        self.services = Self.makeServices(snapshot, shared: shared, previous: services, seed: rng.next())
        pool.configure(snapshot.config.upstream)
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
        pool.sweep(now: now)
        accessLog.flush()
    }

    /// A copy of this loop's service and endpoint state, for `/services` and `/metrics`.
    func report() -> LoopReport {
        LoopReport(
            version: snapshot.mesh.version,
            services: services.map { s in
                LoopReport.Service(
                    name: s.name, latency: s.latency,
                    endpoints: s.endpoints.map {
                        .init(address: $0.config.address.description, inFlight: $0.inFlight, requests: $0.requests)
                    })
            },
            inboundLatency: inboundService.latency,
            upstreamIdle: pool.idleCount)
    }
}

struct LoopReport: Sendable {
    struct Endpoint: Sendable {
        var address: String
        var inFlight: Int
        var requests: UInt64
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
struct AccessLogBuffer {
    private var buffer: [UInt8] = []

    mutating func append(_ line: String) {
        buffer.append(contentsOf: line.utf8)
        buffer.append(UInt8(ascii: "\n"))
        if buffer.count >= 64 * 1024 { flush() }
    }

    mutating func flush() {
        guard !buffer.isEmpty else { return }
        buffer.withUnsafeBytes { raw in
            var offset = 0
            while offset < raw.count {
                let n = write(1, raw.baseAddress! + offset, raw.count - offset)
                if n <= 0 { break }
                offset += n
            }
        }
        buffer.removeAll(keepingCapacity: true)
    }
}

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#elseif canImport(Darwin)
    import Darwin
#endif
