import Atomics
import Dispatch
import Logging
import MeshCore
import NIOConcurrencyHelpers
import NIOCore
import NIOExtras
import NIOHTTP1
import NIOPosix

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#elseif canImport(Darwin)
    import Darwin
#endif

// The admin API: routes, services, metrics, reload and shutdown.
extension MeshRuntime {
    // MARK: - Admin API

    typealias AdminReply = (HTTPResponseStatus, String, String)

    /// Answers one admin request; the future completes on `loop` (the admin connection's loop).
    func handleAdmin(on loop: EventLoop, method: HTTPMethod, uri: String, body: String, remote: SocketAddress?)
        -> EventLoopFuture<AdminReply>
    {
        let path = String(uri.prefix { $0 != "?" })
        let json = "application/json"
        func ok(_ v: JSONValue) -> EventLoopFuture<AdminReply> {
            loop.makeSucceededFuture((.ok, json, v.rendered(pretty: true) + "\n"))
        }
        switch (method, path) {
        case (.GET, "/live"):
            return loop.makeSucceededFuture((.ok, "text/plain", "live\n"))
        case (.GET, "/ready"):
            let ready = shared.ready.load(ordering: .relaxed)
            return loop.makeSucceededFuture((ready ? .ok : .serviceUnavailable, "text/plain", ready ? "ready\n" : "not ready\n"))
        case (.GET, "/config"):
            var c = config.json
            if case .object(var pairs) = c {
                pairs.insert(("version", .int(Int64(shared.snapshot.mesh.version))), at: 0)
                c = .object(pairs)
            }
            return ok(c)
        case (.GET, "/routes"):
            return ok(routesJSON())
        case (.GET, "/identity"):
            return ok(identityJSON())
        case (.GET, "/services"):
            return collectReports(on: loop).map { reports in
                (.ok, json, self.servicesJSON(reports).rendered(pretty: true) + "\n")
            }
        case (.GET, "/metrics"):
            return collectReports(on: loop).map { reports in
                (.ok, "text/plain; version=0.0.4", self.metricsText(reports))
            }
        case (.GET, "/log-level"):
            return loop.makeSucceededFuture((.ok, "text/plain", "\(LogLevelBox.shared.level.rawValue)\n"))
        case (.PUT, "/log-level"), (.POST, "/log-level"):
            guard let level = Logger.Level(rawValue: body.trimmingCharacters(in: " \n\r\t")) else {
                return loop.makeSucceededFuture(
                    (.badRequest, "text/plain", "expected one of: trace debug info notice warning error critical\n"))
            }
            LogLevelBox.shared.level = level
            return loop.makeSucceededFuture((.ok, "text/plain", "\(level.rawValue)\n"))
        case (.POST, "/shutdown"):
            guard let ip = remote?.ipAddress.flatMap({ IPAddress($0) }), ip.isLoopback else {
                return loop.makeSucceededFuture((.forbidden, "text/plain", "shutdown is allowed from loopback only\n"))
            }
            shared.logger.info("shutdown requested through the admin API")
            shutdownRequested()
            return loop.makeSucceededFuture((.ok, "text/plain", "shutting down\n"))
        case (.POST, "/reload"):
            // Parsing, resolving and installing run on the control queue; this loop only waits.
            let promise = loop.makePromise(of: AdminReply.self)
            control.async {
                switch self.reload(force: true, reason: "admin") {
                case .applied(let v): promise.succeed((.ok, "text/plain", "applied version \(v)\n"))
                case .unchanged, .settling: promise.succeed((.ok, "text/plain", "no config file; nothing to reload\n"))
                case .rejected(let why): promise.succeed((.badRequest, "text/plain", why + "\n"))
                }
            }
            return promise.futureResult
        default:
            return loop.makeSucceededFuture(
                (.notFound, "text/plain", "not found; try /live /ready /metrics /config /routes /services /identity /log-level\n"))
        }
    }

    func collectReports(on loop: EventLoop) -> EventLoopFuture<[LoopReport]> {
        let futures = loops.map { ctx in ctx.eventLoop.submit { ctx.report() } }
        return EventLoopFuture.whenAllSucceed(futures, on: loop)
    }

    func routesJSON() -> JSONValue {
        let snapshot = shared.snapshot
        let routes = snapshot.mesh.routes.routes.map { r -> JSONValue in
            let cfg = snapshot.config.routes[r.index]
            var match: [(String, JSONValue)] = [("authority", .string(cfg.match.authority ?? "*"))]
            match.append(("pathPrefix", .string(cfg.match.pathPrefix ?? "/")))
            if let m = cfg.match.method { match.append(("method", .string(m))) }
            if !cfg.match.headers.isEmpty { match.append(("headers", .object(cfg.match.headers.map { ($0.name, .string($0.value)) }))) }
            return .object([
                ("name", .string(r.name)),
                ("match", .object(match)),
                (
                    "backends",
                    .array(
                        cfg.backends.map {
                            .object([("service", .string($0.service)), ("weight", .int(Int64($0.weight)))])
                        })
                ),
                ("timeout", .string(r.timeout.description)),
            ])
        }
        return .object([("version", .int(Int64(snapshot.mesh.version))), ("routes", .array(routes))])
    }

    func servicesJSON(_ reports: [LoopReport]) -> JSONValue {
        let snapshot = shared.snapshot
        let services = snapshot.mesh.services.map { s -> JSONValue in
            var latency = LatencyHistogram()
            var inFlight: [String: Int] = [:]
            var requests: [String: UInt64] = [:]
            var ewma: [String: (sum: Double, n: Int)] = [:]
            var healthy: [String: Bool] = [:]
            var eligible: [String: Bool] = [:]
            var ejectedUntil: [String: Int64] = [:]
            for r in reports {
                guard let rs = r.services.first(where: { $0.name == s.name }) else { continue }
                latency.merge(rs.latency)
                for e in rs.endpoints {
                    inFlight[e.address, default: 0] += e.inFlight
                    requests[e.address, default: 0] += e.requests
                    if let v = e.ewmaNanos {
                        ewma[e.address, default: (0, 0)] = (
                            ewma[e.address, default: (0, 0)].sum + v, ewma[e.address, default: (0, 0)].n + 1
                        )
                    }
                    healthy[e.address] = (healthy[e.address] ?? true) && e.healthy
                    eligible[e.address] = (eligible[e.address] ?? false) || e.eligible
                    if let u = e.ejectedUntil { ejectedUntil[e.address] = max(ejectedUntil[e.address] ?? 0, u) }
                }
            }
            let endpoints = s.endpoints.map { e -> JSONValue in
                let a = e.address.description
                var pairs: [(String, JSONValue)] = [("address", .string(a))]
                if let via = e.via { pairs.append(("via", .string(via.description))) }
                if let z = e.zone { pairs.append(("zone", .string(z))) }
                if let n = e.node { pairs.append(("node", .string(n))) }
                let state = healthy[a] == false ? "ejected" : (eligible[a] == false ? "standby" : "healthy")
                if let until = ejectedUntil[a] {
                    let remaining = Double(until - Int64(NIODeadline.now().uptimeNanoseconds)) / 1e9
                    pairs.append(("returnsInSeconds", .double((max(0, remaining) * 10).rounded() / 10)))
                }
                let ewmaMs: JSONValue = ewma[a].map { .double(($0.sum / Double($0.n)) / 1e6) } ?? .null
                pairs += [
                    ("weight", .int(Int64(e.weight))), ("state", .string(state)),
                    ("inFlight", .int(Int64(inFlight[a] ?? 0))), ("requests", .int(Int64(requests[a] ?? 0))),
                    ("latencyEwmaMs", ewmaMs),
                ]
                return .object(pairs)
            }
            return .object([
                ("name", .string(s.name)), ("balancer", .string(s.balancer.algorithm.rawValue)),
                ("requests", .int(Int64(latency.count))),
                ("latencyP50Ms", latency.quantile(0.5).map { .double($0 * 1000) } ?? .null),
                ("latencyP99Ms", latency.quantile(0.99).map { .double($0 * 1000) } ?? .null),
                ("endpoints", .array(endpoints)),
            ])
        }
        return .object([("version", .int(Int64(snapshot.mesh.version))), ("services", .array(services))])
    }

    func metricsText(_ reports: [LoopReport]) -> String {
        var out = shared.metrics.registry.emitToString()
        out += ServiceMetrics.render(shared.snapshot.services.map(\.metrics) + [shared.inboundMetrics])
        // Per-loop latency histograms, merged.
        var byService: [(String, String, LatencyHistogram)] = []
        var outboundMerged: [String: LatencyHistogram] = [:]
        var inbound = LatencyHistogram()
        for r in reports {
            for s in r.services { outboundMerged[s.name, default: LatencyHistogram()].merge(s.latency) }
            inbound.merge(r.inboundLatency)
        }
        for name in outboundMerged.keys.sorted() { byService.append(("outbound", name, outboundMerged[name]!)) }
        byService.append(("inbound", "local", inbound))
        out += "# HELP meshd_request_duration_seconds Time from request head to response end.\n"
        out += "# TYPE meshd_request_duration_seconds histogram\n"
        for (direction, service, h) in byService {
            out += LatencyHistogram.prometheusSeries(
                "meshd_request_duration_seconds", labels: "direction=\"\(direction)\",service=\"\(service)\"", h)
        }
        var byRoute: [String: LatencyHistogram] = [:]
        for r in reports { for route in r.routes { byRoute[route.name, default: LatencyHistogram()].merge(route.latency) } }
        out += RouteMetrics.render(shared.snapshot.routes.map(\.metrics), latency: byRoute)
        if config.mode == .node { out += sourceMetricsText(reports) }
        let idle = reports.reduce(0) { $0 + $1.upstreamIdle }
        out += "# TYPE meshd_upstream_pool_idle gauge\nmeshd_upstream_pool_idle \(idle)\n"
        let p = ProcessStats.read()
        out += "# TYPE process_resident_memory_bytes gauge\nprocess_resident_memory_bytes \(p.rssBytes)\n"
        out += "# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total \(p.cpuSeconds)\n"
        out += "# TYPE process_open_fds gauge\nprocess_open_fds \(p.openFDs)\n"
        out += "# TYPE process_max_fds gauge\nprocess_max_fds \(p.maxFDs)\n"
        out += "# TYPE meshd_heap_in_use_bytes gauge\nmeshd_heap_in_use_bytes \(p.heapInUse)\n"
        out += "# TYPE meshd_heap_free_bytes gauge\nmeshd_heap_free_bytes \(p.heapFree)\n"
        out += "# TYPE process_start_time_seconds gauge\nprocess_start_time_seconds \(ProcessStats.startTime)\n"
        out += "# TYPE meshd_uptime_seconds gauge\nmeshd_uptime_seconds \(Double((NIODeadline.now() - startedAt).nanoseconds) / 1e9)\n"
        return MetricHelp.added(to: out)
    }

    /// `meshd_source_requests_total{source}`: the busiest source pods by name, the rest as `other`
    /// (`SourceLabeler` keeps every series a counter).
    func sourceMetricsText(_ reports: [LoopReport]) -> String {
        var counts: [String: UInt64] = [:]
        var total: UInt64 = 0
        for r in reports {
            total &+= r.sourceTotal
            for (s, c) in r.sourceCounts { counts[s, default: 0] &+= c }
        }
        let now = Int64(NIODeadline.now().uptimeNanoseconds)
        let (sources, other) = sourceLabeler.withLockedValue { $0.series(counts: counts, total: total, now: now) }
        var out = "# TYPE meshd_source_requests_total counter\n"  // HELP: MetricHelp
        for (s, c) in sources { out += "meshd_source_requests_total{source=\"\(s)\"} \(c)\n" }
        out += "meshd_source_requests_total{source=\"other\"} \(other)\n"
        return out
    }
}
