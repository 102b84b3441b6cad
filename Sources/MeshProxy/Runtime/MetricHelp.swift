/// The `# HELP` text of every metric family meshd exports (docs/metrics.md has the full story).
/// swift-metrics' handles carry no help text, so `/metrics` adds these lines to its exposition.
enum MetricHelp {
    static let text: [String: String] = [
        "meshd_ready": "1 once every listener is bound and meshd serves; 0 before and while draining.",
        "meshd_uptime_seconds": "Seconds since meshd started.",
        "meshd_config_version": "Version of the configuration in force (1 at start, +1 per applied reload or discovery change).",
        "meshd_config_reloads_total": "Configuration reloads, by result (ok: applied; failed: rejected, the old one kept).",
        "meshd_discovery_updates_total": "Endpoint sets found by service discovery, by service and result.",
        "meshd_requests_total": "HTTP requests completed per service, by direction and the status class the client got.",
        "meshd_request_duration_seconds": "Time from request head to response end, per service.",
        "meshd_grpc_responses_total": "gRPC calls completed per service, by grpc-status.",
        "meshd_route_requests_total": "Requests matched by each route, by the status class the client got.",
        "meshd_route_grpc_responses_total": "gRPC calls matched by each route, by status.",
        "meshd_route_request_duration_seconds": "Time from request head to response end, per route.",
        "meshd_source_requests_total": "Outbound requests per source pod (node mode): the busiest pods by address, the rest as other.",
        "meshd_errors_total": "Replies meshd produced itself, by direction and x-meshd-error kind.",
        "meshd_retries_total": "Retries and hedges sent per service, by reason.",
        "meshd_retries_skipped_total": "Retries a policy allowed but meshd did not send, per service, by cause.",
        "meshd_rate_limited_total": "Requests refused with 429 by a route's rate limit, per service.",
        "meshd_outlier_ejections_total": "Endpoints ejected by outlier detection, per service.",
        "meshd_outlier_ejected": "Endpoints ejected now, per service.",
        "meshd_connections_open": "Open downstream connections, by listener direction.",
        "meshd_connections_total": "Downstream connections accepted, by listener direction.",
        "meshd_connections_refused_total": "Downstream connections closed at accept or before serving, by direction and reason.",
        "meshd_connections_closed_total": "Downstream connections meshd closed, by direction and reason.",
        "meshd_protocol_detected_total": "Protocols detected on downstream connections, by direction and protocol.",
        "meshd_upgrades_total": "HTTP/1.1 upgrades (WebSocket and others) switched to a byte pipe.",
        "meshd_upstream_connects_total": "Upstream connection attempts, by result.",
        "meshd_upstream_connections_open": "Open upstream connections (pooled or in use).",
        "meshd_upstream_http2_streams_open": "Open streams on upstream HTTP/2 connections.",
        "meshd_upstream_pool_reuse_total": "Requests sent on a pooled upstream connection rather than a new one.",
        "meshd_upstream_pool_idle": "Idle pooled upstream connections, over every event loop.",
        "meshd_upstream_stale_retries_total": "Requests sent again on a new connection: the pooled one was closed as it was reused.",
        "meshd_tcp_connections_total": "Opaque TCP connections proxied, per target.",
        "meshd_tcp_bytes_total": "Bytes proxied on opaque TCP connections, per target and direction.",
        "meshd_tcp_connect_failures_total": "Opaque TCP connections whose upstream connect failed, per target.",
        "meshd_tcp_refused_total": "Opaque TCP connections refused, per target and reason.",
        "meshd_tls_handshakes_total": "mTLS handshakes completed, by direction.",
        "meshd_tls_handshake_errors_total": "mTLS handshakes refused or failed, by direction and reason.",
        "meshd_authorization_total": "Authorization decisions on inbound requests, by decision and rule.",
        "meshd_identity_reloads_total": "Changes of the identity files, by result (ok: in force; rejected: the old identity kept).",
        "meshd_identity_expiry_timestamp_seconds": "When each workload certificate expires, Unix time.",
        "meshd_access_log_dropped_total": "Access-log lines dropped because the writer was 4 MiB behind.",
        "meshd_tap_dropped_total": "Requests a tap did not get (its client was not reading, or past the per-loop bound).",
        "process_resident_memory_bytes": "Resident memory of the meshd process in bytes.",
        "process_cpu_seconds_total": "User and system CPU time of the meshd process in seconds.",
        "process_open_fds": "Open file descriptors of the meshd process.",
        "process_max_fds": "The process's limit on open file descriptors.",
        "meshd_heap_in_use_bytes": "Bytes the C allocator has handed out to meshd and not got back (glibc mallinfo2).",
        "meshd_heap_free_bytes": "Free bytes the C allocator keeps for reuse instead of returning them to the system.",
        "meshd_upgrade_handovers_total":
            "Listener hand-overs over upgrade.socket, by result (handed_over, taken_over, refused, abandoned).",
        "process_start_time_seconds": "When the meshd process started, Unix time in seconds.",
    ]

    /// `exposition` with a `# HELP` line before every `# TYPE` line that has none.
    static func added(to exposition: String) -> String {
        var out = ""
        out.reserveCapacity(exposition.utf8.count + text.count * 80)
        var helped = Set<Substring>()
        for line in exposition.split(separator: "\n", omittingEmptySubsequences: false) {
            if line.hasPrefix("# HELP ") {
                if let name = line.dropFirst(7).split(separator: " ").first { helped.insert(name) }
            } else if line.hasPrefix("# TYPE "), let name = line.dropFirst(7).split(separator: " ").first, !helped.contains(name),
                let help = text[String(name)]
            {
                out += "# HELP \(name) \(help)\n"
                helped.insert(name)
            }
            out += line
            out += "\n"
        }
        if out.hasSuffix("\n\n") { out.removeLast() }
        return out
    }
}
