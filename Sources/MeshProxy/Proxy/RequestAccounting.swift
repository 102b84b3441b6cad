import MeshCore
import NIOCore

// The end of a request, however it ended: the resources it held are given back and it is counted
// (per-service metrics, latency, gRPC status, the access log).
extension HTTPProxyHandler {
    func finishRequest(status: Int, error: MeshError?) {
        releasePending()
        dropHedge()
        cancelAttemptTimers()
        let now = NIODeadline.now()
        let nowNanos = Int64(now.uptimeNanoseconds)
        if let endpoint = req.endpoint {
            // The balancer learns the time to the response head (nil when there was none).
            // meshd's own error with no response head (connect failure, reset, timeout): a failure.
            let latency = req.responseHeadNanos.map { $0 - Int64(req.started.uptimeNanoseconds) }
            endpoint.finished(latencyNanos: latency, failed: latency == nil && error != nil, now: nowNanos)
            req.endpoint = nil
        }
        req.replay.removeAll()
        let elapsed = now - req.started
        let service = req.service
        req.service = nil
        if let service {
            if req.countedActive {
                req.countedActive = false
                service.counters.activeRequests.wrappingDecrement(ordering: .relaxed)
            }
            if direction == .outbound && req.exchange.holdsRetrySlot {
                service.counters.activeRetries.wrappingDecrement(ordering: .relaxed)
            }
            service.metrics.requests[MeshMetrics.statusClassIndex(status)].increment()
            service.latency.record(nanoseconds: elapsed.nanoseconds)
        }
        let grpcCode =
            req.grpc ? req.exchange.grpcStatus(recorded: req.grpcStatus, httpStatus: status, error: error, now: nowNanos) : nil
        if let service, let grpcCode { service.metrics.grpcCounter(grpcCode).increment() }
        if direction == .outbound && loop.snapshot.config.mode == .node { loop.countSource(clientIP) }
        if let route = req.routeState {
            route.shared.metrics.requests[MeshMetrics.statusClassIndex(status)].increment()
            if let grpcCode { route.shared.metrics.grpcCounter(grpcCode).increment() }
            route.latency.record(nanoseconds: elapsed.nanoseconds)
        }
        let options = loop.snapshot.config.accessLogOptions
        // A random draw only when sampling (the loop's generator also picks endpoints).
        let logging =
            loop.snapshot.config.accessLog
            && (options.sampleRatio >= 1 || options.samples(errorReply: error != nil, draw: Double(loop.rng.next() >> 11) * 0x1p-53))
        let tapping = loop.shared.tap.active.load(ordering: .relaxed) > 0
        if logging || tapping {
            let route = req.routeState?.name
            let entry = AccessLog.Entry(
                direction: direction.label, method: req.method.rawValue, authority: req.authority,
                path: req.path, status: status, grpcStatus: grpcCode, durationNanos: elapsed.nanoseconds,
                client: clientIP, identity: connectionGuard.tls?.peer.description, service: service?.name, route: route,
                upstream: req.target.map(loop.addressText), attempts: req.exchange.attempts, bytesIn: req.bytesIn,
                bytesOut: req.bytesOut, requestID: req.requestID, traceID: req.traceID, error: error?.rawValue)
            if logging { loop.accessLog.append(entry) }
            if tapping {
                let line = AccessLog.line(entry)
                loop.tap(TapEvent(direction: direction.label, service: service?.name, route: route, status: status, line: line))
            }
        }
    }
}
