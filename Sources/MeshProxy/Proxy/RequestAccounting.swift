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
            endpoint.finished(latencyNanos: req.responseHeadNanos.map { $0 - Int64(req.started.uptimeNanoseconds) }, now: nowNanos)
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
        if loop.snapshot.config.accessLog {
            loop.accessLog.append(
                AccessLog.line(
                    .init(
                        direction: direction.label, method: req.method.rawValue, authority: String(req.authority),
                        path: String(req.path), status: status, grpcStatus: grpcCode, durationNanos: elapsed.nanoseconds,
                        client: clientIP, identity: connectionGuard.tls?.peer.description, service: service?.name,
                        upstream: req.target.map(MeshRuntime.hostPort), attempts: req.exchange.attempts, bytesIn: req.bytesIn,
                        bytesOut: req.bytesOut, requestID: req.requestID, traceID: req.traceID, error: error?.rawValue)))
        }
    }
}
