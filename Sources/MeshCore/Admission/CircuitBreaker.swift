/// Per-service circuit-breaker limits (Envoy's thresholds; DESIGN defaults 1024/1024/1024/3). Past a
/// limit a request is refused at once with 503 `x-meshd-error: overflow-LIMIT` (a retry is not sent).
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

        /// meshd's reply when a request is refused for this limit (`retries` has none: the retry is
        /// skipped, the request goes on).
        public var error: MeshError? {
            switch self {
            case .connections: return .overflowConnections
            case .pending: return .overflowPending
            case .requests: return .overflowRequests
            case .retries: return nil
            }
        }

        /// The config key, for replies and logs.
        public var key: String {
            switch self {
            case .connections: return "limits.maxConnections"
            case .pending: return "limits.maxPending"
            case .requests: return "limits.maxRequests"
            case .retries: return "limits.maxRetries"
            }
        }
    }

    public func limit(_ kind: Overflow) -> Int {
        switch kind {
        case .connections: return maxConnections
        case .pending: return maxPending
        case .requests: return maxRequests
        case .retries: return maxRetries
        }
    }

    /// Whether one more of `kind` fits beside the `current` ones.
    public func admits(_ kind: Overflow, current: Int) -> Bool { current < limit(kind) }
}
