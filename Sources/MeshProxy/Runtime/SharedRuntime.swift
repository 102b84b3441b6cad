import Atomics
import Logging
import MeshCore
import NIOConcurrencyHelpers
import NIOCore

/// State shared by all event loops: metrics handles, the logger, the published snapshot (read on the
/// control side; each loop keeps its own copy), and open-connection counters.
final class SharedRuntime: Sendable {
    let metrics: MeshMetrics
    let logger: Logger
    let ready = ManagedAtomic<Bool>(false)
    let outboundOpen = ManagedAtomic<Int>(0)
    /// Node mode: open outbound connections per source pod (`http.maxConnectionsPerSource`).
    let outboundSources = SourceConnections()
    /// Per-event log lines that a flood could multiply, each kind at most 10 a second.
    let refusedLog = LogLimiter()
    let protocolErrorLog = LogLimiter()
    let upstreamErrorLog = LogLimiter()
    /// Inbound requests are counted under one pseudo-service, `local`.
    let inboundMetrics = ServiceMetrics(name: "local", direction: .inbound)
    let inboundOpen = ManagedAtomic<Int>(0)
    private let current: NIOLockedValueBox<ResolvedSnapshot>
    /// Every loop's context, for broadcasts (set once at start).
    let loops = NIOLockedValueBox<[LoopContext]>([])
    private let bound = NIOLockedValueBox<[HostPort]>([])

    /// The addresses meshd's listeners are bound to (a node proxy never forwards to them). Read when a
    /// loop installs a snapshot, never per request.
    var boundListeners: [HostPort] {
        get { bound.withLockedValue { $0 } }
        set { bound.withLockedValue { $0 = newValue } }
    }

    /// An endpoint was ejected by one loop's outlier detector: every loop stops picking it until `until`.
    func broadcastEjection(service: String, address: String, until: Int64, times: Int) {
        for loop in loops.withLockedValue({ $0 }) {
            loop.eventLoop.execute { loop.applyEjection(service: service, address: address, until: until, times: times) }
        }
    }

    /// Where every loop's access-log lines go (written off the loops).
    let accessLogWriter: AccessLogWriter
    /// Live requests for `GET /tap`.
    let tap: TapHub

    init(metrics: MeshMetrics, logger: Logger, snapshot: ResolvedSnapshot) {
        self.metrics = metrics
        self.accessLogWriter = AccessLogWriter(dropped: metrics.counter("meshd_access_log_dropped_total", []))
        self.tap = TapHub(dropped: metrics.counter("meshd_tap_dropped_total", []))
        self.logger = logger
        self.current = NIOLockedValueBox(snapshot)
    }

    /// The latest published snapshot (control side only; never read per request).
    var snapshot: ResolvedSnapshot {
        get { current.withLockedValue { $0 } }
        set { current.withLockedValue { $0 = newValue } }
    }
}

/// Circuit-breaker counters of one service across all event loops: atomics, so admission is a
/// load-and-add, never a lock.
final class ServiceCounters: Sendable {
    let activeRequests = ManagedAtomic<Int>(0)
    let pending = ManagedAtomic<Int>(0)
    let connections = ManagedAtomic<Int>(0)
    let activeRetries = ManagedAtomic<Int>(0)

    func current(_ kind: CircuitBreakerLimits.Overflow) -> Int {
        switch kind {
        case .connections: return connections.load(ordering: .relaxed)
        case .pending: return pending.load(ordering: .relaxed)
        case .requests: return activeRequests.load(ordering: .relaxed)
        case .retries: return activeRetries.load(ordering: .relaxed)
        }
    }
}
