import Atomics
import CoreMetrics
import MeshCore
import NIOConcurrencyHelpers
import Prometheus

/// Direction of traffic through meshd: `outbound` (the app calls another service) or `inbound`
/// (another meshd calls the local app / a pod of this node).
enum Direction: Int, CaseIterable, Sendable {
    case outbound = 0
    case inbound = 1

    var label: String { self == .outbound ? "outbound" : "inbound" }
}

/// All metrics meshd exposes. Counters and gauges go through swift-metrics into a swift-prometheus
/// registry; each handle is created once (per service, on config install) and kept, so the request
/// path only does an atomic add. Latency histograms are per event loop (see `LatencyHistogram`) and
/// merged at scrape time, so recording one takes no lock.
final class MeshMetrics: Sendable {
    let registry: PrometheusCollectorRegistry
    private let factory: PrometheusMetricsFactory
    /// For handles created while running (discovery counters, by service name).
    var factoryForDynamicMetrics: PrometheusMetricsFactory { factory }
    let errors: [[CoreMetrics.Counter]]  // [direction][MeshError.allCases index]
    let connectionsOpen: [CoreMetrics.Meter]
    let connectionsTotal: [CoreMetrics.Counter]
    let connectionsRefused: [[CoreMetrics.Counter]]  // [direction][reason]
    let upstreamConnectsOK: CoreMetrics.Counter
    let upstreamConnectsFailed: CoreMetrics.Counter
    let upstreamConnectionsOpen: CoreMetrics.Meter
    /// Streams open on upstream HTTP/2 connections (handed out and not yet closed), all loops.
    let upstreamHTTP2StreamsOpen: CoreMetrics.Meter
    let upstreamPoolReuse: CoreMetrics.Counter
    let upstreamStaleRetries: CoreMetrics.Counter
    let reloadsOK: CoreMetrics.Counter
    let reloadsFailed: CoreMetrics.Counter
    let configVersion: CoreMetrics.Gauge
    let ready: CoreMetrics.Gauge
    let upgrades: CoreMetrics.Counter

    static let refusedReasons = ["source_not_allowed", "connection_limit", "source_connection_limit"]
    private let counterCache = NIOLockedValueBox<[String: CoreMetrics.Counter]>([:])

    /// Handles are bound to this instance's registry; `bootstrapGlobal` also makes it the process's
    /// swift-metrics backend (the binary does that once; tests do not).
    init(bootstrapGlobal: Bool = false) {
        let registry = PrometheusCollectorRegistry()
        self.registry = registry
        var factory = PrometheusMetricsFactory(registry: registry)
        factory.defaultDurationHistogramBuckets = LatencyHistogram.bounds.map { .nanoseconds(Int64($0 * 1e9)) }
        self.factory = factory
        errors = Direction.allCases.map { d in
            MeshError.allCases.map { e in
                CoreMetrics.Counter(
                    label: "meshd_errors_total", dimensions: [("direction", d.label), ("kind", e.rawValue)], factory: factory)
            }
        }
        connectionsOpen = Direction.allCases.map {
            CoreMetrics.Meter(label: "meshd_connections_open", dimensions: [("direction", $0.label)], factory: factory)
        }
        connectionsTotal = Direction.allCases.map {
            CoreMetrics.Counter(label: "meshd_connections_total", dimensions: [("direction", $0.label)], factory: factory)
        }
        connectionsRefused = Direction.allCases.map { d in
            Self.refusedReasons.map {
                CoreMetrics.Counter(
                    label: "meshd_connections_refused_total", dimensions: [("direction", d.label), ("reason", $0)], factory: factory)
            }
        }
        upstreamConnectsOK = CoreMetrics.Counter(label: "meshd_upstream_connects_total", dimensions: [("result", "ok")], factory: factory)
        upstreamConnectsFailed = CoreMetrics.Counter(
            label: "meshd_upstream_connects_total", dimensions: [("result", "failed")], factory: factory)
        upstreamConnectionsOpen = CoreMetrics.Meter(label: "meshd_upstream_connections_open", factory: factory)
        upstreamHTTP2StreamsOpen = CoreMetrics.Meter(label: "meshd_upstream_http2_streams_open", factory: factory)
        upstreamPoolReuse = CoreMetrics.Counter(label: "meshd_upstream_pool_reuse_total", factory: factory)
        upstreamStaleRetries = CoreMetrics.Counter(label: "meshd_upstream_stale_retries_total", factory: factory)
        reloadsOK = CoreMetrics.Counter(label: "meshd_config_reloads_total", dimensions: [("result", "ok")], factory: factory)
        reloadsFailed = CoreMetrics.Counter(label: "meshd_config_reloads_total", dimensions: [("result", "failed")], factory: factory)
        configVersion = CoreMetrics.Gauge(label: "meshd_config_version", factory: factory)
        ready = CoreMetrics.Gauge(label: "meshd_ready", factory: factory)
        upgrades = CoreMetrics.Counter(label: "meshd_upgrades_total", factory: factory)
        if bootstrapGlobal { MetricsSystem.bootstrap(factory) }
    }

    /// A counter handle, created once per label set and cached (config install / connection setup).
    func counter(_ label: String, _ dims: [(String, String)]) -> CoreMetrics.Counter {
        let key = label + "|" + dims.map { "\($0.0)=\($0.1)" }.joined(separator: ",")
        return counterCache.withLockedValue { cache in
            if let c = cache[key] { return c }
            let c = CoreMetrics.Counter(label: label, dimensions: dims, factory: factory)
            cache[key] = c
            return c
        }
    }

    struct TCPCounters {
        let connections: CoreMetrics.Counter
        let connectFailures: CoreMetrics.Counter
        let refused: CoreMetrics.Counter
        let bytesFromClient: CoreMetrics.Counter
        let bytesFromUpstream: CoreMetrics.Counter
    }

    /// Opaque TCP counters by direction and target label (service name, `app`, `original-dst`).
    func tcp(_ d: Direction, _ target: String) -> TCPCounters {
        let dims = [("direction", d.label), ("target", target)]
        return TCPCounters(
            connections: counter("meshd_tcp_connections_total", dims),
            connectFailures: counter("meshd_tcp_connect_failures_total", dims),
            refused: counter("meshd_tcp_refused_total", [("direction", d.label)]),
            bytesFromClient: counter("meshd_tcp_bytes_total", dims + [("flow", "from_client")]),
            bytesFromUpstream: counter("meshd_tcp_bytes_total", dims + [("flow", "from_upstream")]))
    }

    /// Protocol detection outcomes.
    func detected(_ d: Direction, _ proto: String) -> CoreMetrics.Counter {
        counter("meshd_protocol_detected_total", [("direction", d.label), ("protocol", proto)])
    }

    func error(_ e: MeshError, _ d: Direction) -> CoreMetrics.Counter {
        errors[d.rawValue][MeshError.allCases.firstIndex(of: e)!]
    }

    /// The 5 status-class request counters of one (direction, service); created on config install.
    static func statusClassIndex(_ status: Int) -> Int {
        switch status {
        case ..<200: return 0
        case 200..<300: return 1
        case 300..<400: return 2
        case 400..<500: return 3
        default: return 4
        }
    }
}

extension LatencyHistogram {
    /// One histogram's `_bucket`, `_sum` and `_count` lines in Prometheus text.
    static func prometheusSeries(_ name: String, labels: String, _ h: LatencyHistogram) -> String {
        var out = ""
        let cumulative = h.cumulative
        for (i, bound) in bounds.enumerated() {
            out += "\(name)_bucket{\(labels),le=\"\(bound)\"} \(cumulative[i])\n"
        }
        out += "\(name)_bucket{\(labels),le=\"+Inf\"} \(h.count)\n"
        out += "\(name)_sum{\(labels)} \(Double(h.sumNanos) / 1e9)\n"
        out += "\(name)_count{\(labels)} \(h.count)\n"
        return out
    }
}
