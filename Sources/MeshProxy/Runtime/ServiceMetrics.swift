import Atomics
import MeshCore

/// A counter that is one atomic integer (no registry behind it).
final class AtomicCounter: Sendable {
    let value = ManagedAtomic<Int>(0)
    @inline(__always) func increment() { value.wrappingIncrement(ordering: .relaxed) }
    var count: Int { value.load(ordering: .relaxed) }
}

/// The metrics of one service (or of the inbound pseudo-service `local`): plain atomics, made with
/// the service's shared state on the control side and rendered by `/metrics` from the current
/// snapshot. Creating them costs the same for the 5000th service as for the first — a
/// swift-prometheus registry copies a metric's whole label table for every new label set, which
/// made start-up and reloads quadratic in the number of services — and a removed service's series
/// go with it instead of staying in a registry forever.
final class ServiceMetrics: Sendable {
    static let retryReasons = [
        "connect-failure", "refused-stream", "reset", "timeout", "5xx", "gateway-error", "status", "grpc", "hedge",
    ]
    static let skipCauses = ["budget", "limit", "body-too-large", "non-idempotent", "deadline", "attempts"]
    static let statusClasses = ["1xx", "2xx", "3xx", "4xx", "5xx"]

    let name: String
    let direction: Direction
    /// By status class (`MeshMetrics.statusClassIndex`).
    let requests: [AtomicCounter]
    /// By gRPC status code (0...16).
    let grpc: [AtomicCounter]
    let retries: [String: AtomicCounter]
    let retriesSkipped: [String: AtomicCounter]
    let ejections = AtomicCounter()
    let rateLimited = AtomicCounter()
    /// Endpoints ejected now (a gauge, set by loop 0).
    let ejected = ManagedAtomic<Int>(0)

    init(name: String, direction: Direction) {
        self.name = name
        self.direction = direction
        requests = Self.statusClasses.map { _ in AtomicCounter() }
        grpc = GRPC.codeNames.map { _ in AtomicCounter() }
        retries = Dictionary(uniqueKeysWithValues: Self.retryReasons.map { ($0, AtomicCounter()) })
        retriesSkipped = Dictionary(uniqueKeysWithValues: Self.skipCauses.map { ($0, AtomicCounter()) })
    }

    func grpcCounter(_ code: Int) -> AtomicCounter { Self.counter(grpc, code) }

    /// The counter of gRPC status `code` (0...16; anything else counts as 2, UNKNOWN).
    static func counter(_ byCode: [AtomicCounter], _ code: Int) -> AtomicCounter {
        byCode[code >= 0 && code < byCode.count ? code : 2]
    }

    /// Prometheus text for these services, one family at a time (each `# TYPE` once).
    static func render(_ all: [ServiceMetrics]) -> String {
        var out = ""
        func family(_ name: String, _ type: String, _ body: (inout String) -> Void) {
            out += "# TYPE \(name) \(type)\n"
            body(&out)
        }
        family("meshd_requests_total", "counter") { out in
            for s in all {
                for (i, cls) in statusClasses.enumerated() {
                    out +=
                        "meshd_requests_total{direction=\"\(s.direction.label)\",service=\"\(s.name)\",status_class=\"\(cls)\"} \(s.requests[i].count)\n"
                }
            }
        }
        family("meshd_grpc_responses_total", "counter") { out in
            for s in all {
                for (code, c) in s.grpc.enumerated() where c.count > 0 {
                    out +=
                        "meshd_grpc_responses_total{direction=\"\(s.direction.label)\",service=\"\(s.name)\",code=\"\(GRPC.codeName(code))\"} \(c.count)\n"
                }
            }
        }
        let outbound = all.filter { $0.direction == .outbound }
        family("meshd_retries_total", "counter") { out in
            for s in outbound {
                for reason in retryReasons {
                    out += "meshd_retries_total{service=\"\(s.name)\",reason=\"\(reason)\"} \(s.retries[reason]!.count)\n"
                }
            }
        }
        family("meshd_retries_skipped_total", "counter") { out in
            for s in outbound {
                for cause in skipCauses {
                    out += "meshd_retries_skipped_total{service=\"\(s.name)\",cause=\"\(cause)\"} \(s.retriesSkipped[cause]!.count)\n"
                }
            }
        }
        family("meshd_outlier_ejections_total", "counter") { out in
            for s in outbound { out += "meshd_outlier_ejections_total{service=\"\(s.name)\"} \(s.ejections.count)\n" }
        }
        family("meshd_outlier_ejected", "gauge") { out in
            for s in outbound { out += "meshd_outlier_ejected{service=\"\(s.name)\"} \(s.ejected.load(ordering: .relaxed))\n" }
        }
        family("meshd_rate_limited_total", "counter") { out in
            for s in outbound { out += "meshd_rate_limited_total{service=\"\(s.name)\"} \(s.rateLimited.count)\n" }
        }
        return out
    }
}

/// The metrics of one route (outbound), by the route's name: a bounded label, one series set per
/// configured route. Latency lives per loop in `RouteState` and is merged by `/metrics`.
final class RouteMetrics: Sendable {
    let name: String
    /// By status class (`MeshMetrics.statusClassIndex`).
    let requests: [AtomicCounter]
    /// By gRPC status code (0...16).
    let grpc: [AtomicCounter]

    init(name: String) {
        self.name = name
        requests = ServiceMetrics.statusClasses.map { _ in AtomicCounter() }
        grpc = GRPC.codeNames.map { _ in AtomicCounter() }
    }

    func grpcCounter(_ code: Int) -> AtomicCounter { ServiceMetrics.counter(grpc, code) }

    /// Prometheus text for the routes: requests by status class, gRPC statuses, and the latency
    /// histograms merged over the loops (`latency[name]`).
    static func render(_ all: [RouteMetrics], latency: [String: LatencyHistogram]) -> String {
        var out = "# HELP meshd_route_requests_total Requests matched by each route, by the status class the client got.\n"
        out += "# TYPE meshd_route_requests_total counter\n"
        for r in all {
            for (i, cls) in ServiceMetrics.statusClasses.enumerated() {
                out += "meshd_route_requests_total{route=\"\(r.name)\",status_class=\"\(cls)\"} \(r.requests[i].count)\n"
            }
        }
        out += "# HELP meshd_route_grpc_responses_total gRPC calls matched by each route, by status.\n"
        out += "# TYPE meshd_route_grpc_responses_total counter\n"
        for r in all {
            for (code, c) in r.grpc.enumerated() where c.count > 0 {
                out += "meshd_route_grpc_responses_total{route=\"\(r.name)\",code=\"\(GRPC.codeName(code))\"} \(c.count)\n"
            }
        }
        out += "# HELP meshd_route_request_duration_seconds Time from request head to response end, per route.\n"
        out += "# TYPE meshd_route_request_duration_seconds histogram\n"
        for r in all {
            let h = latency[r.name] ?? LatencyHistogram()
            out += LatencyHistogram.prometheusSeries("meshd_route_request_duration_seconds", labels: "route=\"\(r.name)\"", h)
        }
        return out
    }
}
