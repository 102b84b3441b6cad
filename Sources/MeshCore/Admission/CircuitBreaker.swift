/// Per-service circuit-breaker limits (Envoy's thresholds; DESIGN defaults 1024/1024/1024/3). Past a
/// limit a request is refused at once with 503 `x-meshd-error: overflow-LIMIT`.
public struct CircuitBreakerLimits: Sendable, Equatable {
    public var maxConnections = 1024
    public var maxPending = 1024
    public var maxRequests = 1024
    public var maxRetries = 3
    public init() {}

    public enum Overflow: String, Sendable, CaseIterable {
        case connections
        case pending
        case requests
        case retries
    }

    /// The first limit `counts` would exceed by one more, or nil.
    public func admit(requests: Int) -> Overflow? { requests >= maxRequests ? .requests : nil }
    public func admitPending(pending: Int) -> Overflow? { pending >= maxPending ? .pending : nil }
    public func admitConnection(connections: Int) -> Overflow? { connections >= maxConnections ? .connections : nil }
    public func admitRetry(retries: Int) -> Overflow? { retries >= maxRetries ? .retries : nil }
}
