/// When and how a route retries (configuration, plus the pure decision of whether an attempt's
/// outcome is worth retrying).
public struct RetryPolicy: Sendable, Equatable {
    public enum Condition: Hashable, Sendable, CustomStringConvertible {
        /// The TCP connection to the endpoint could not be made (refused, unreachable, timed out).
        case connectFailure
        /// An HTTP/2 stream refused by the peer (REFUSED_STREAM); never reached the application.
        case refusedStream
        /// The connection broke before a response head (reset, EOF), or the per-try timeout fired.
        case reset
        /// Any 5xx response (and per-try timeouts, as 504).
        case fiveXX
        /// 502, 503, 504 (and per-try timeouts).
        case gatewayError
        /// A listed status code.
        case status(Int)
        /// A gRPC status, from the response headers or trailers.
        case grpc(GRPCStatus)

        public var description: String {
            switch self {
            case .connectFailure: return "connect-failure"
            case .refusedStream: return "refused-stream"
            case .reset: return "reset"
            case .fiveXX: return "5xx"
            case .gatewayError: return "gateway-error"
            case .status(let s): return String(s)
            case .grpc(let g): return g.name
            }
        }

        public static func parse(_ text: String) -> Condition? {
            switch text.lowercased() {
            case "connect-failure": return .connectFailure
            case "refused-stream": return .refusedStream
            case "reset": return .reset
            case "5xx": return .fiveXX
            case "gateway-error": return .gatewayError
            default:
                if let code = Int(text), (100...599).contains(code) { return .status(code) }
                if let g = GRPCStatus(name: text) { return .grpc(g) }
                return nil
            }
        }
    }

    public var retryOn: Set<Condition> = [.connectFailure]
    /// Total attempts, the first included (gRPC's maxAttempts). 1 disables retries.
    public var attempts = 3
    public var perTryTimeout: MeshDuration?
    public var backoff = Backoff()
    public var budget = RetryBudget.Config()
    /// After this long without a response head, send a second attempt to another endpoint and take
    /// the first good answer (the request must be fully read and buffered).
    public var hedgeAfter: MeshDuration?
    /// Retry methods that are not idempotent (POST, PATCH) too.
    public var retryNonIdempotent = false
    /// Request bodies up to this size are kept for replay; larger ones are not retried.
    public var bufferBytes = 64 * 1024

    public init() {}

    /// The policy used when a route has no `retry:`: a connection that could not be made is retried
    /// (nothing reached the endpoint), nothing else.
    public static let connectOnly = RetryPolicy()
}

/// The gRPC status codes that retry policies name.
public enum GRPCStatus: Int, Sendable, CaseIterable {
    case cancelled = 1
    case deadlineExceeded = 4
    case resourceExhausted = 8
    case internalError = 13
    case unavailable = 14

    public var name: String {
        switch self {
        case .cancelled: return "cancelled"
        case .deadlineExceeded: return "deadline-exceeded"
        case .resourceExhausted: return "resource-exhausted"
        case .internalError: return "internal"
        case .unavailable: return "unavailable"
        }
    }

    public init?(name: String) {
        guard let s = GRPCStatus.allCases.first(where: { $0.name == name.lowercased() }) else { return nil }
        self = s
    }
}

/// How one attempt ended, as the retry policy and the outlier detector see it.
public enum AttemptOutcome: Sendable, Equatable {
    case connectFailure
    case refusedStream
    /// Broke before a response head.
    case reset
    /// No response head within the per-try timeout.
    case timeout
    case response(status: Int, grpcStatus: Int?)

    /// For the outlier detector: a 5xx, and whether it is a gateway failure (502/503/504, connect
    /// failure, reset, timeout).
    public var isFailure: (fiveXX: Bool, gateway: Bool) {
        switch self {
        case .connectFailure, .reset, .timeout, .refusedStream: return (false, true)
        case .response(let status, _):
            return (status >= 500, status == 502 || status == 503 || status == 504)
        }
    }
}

extension RetryPolicy {
    /// The retry reason (for metrics) when `outcome` matches `retryOn`; nil when it must not be retried.
    public func retryReason(for outcome: AttemptOutcome) -> String? {
        switch outcome {
        case .connectFailure:
            return retryOn.contains(.connectFailure) ? "connect-failure" : nil
        case .refusedStream:
            return retryOn.contains(.refusedStream) ? "refused-stream" : nil
        case .reset:
            return retryOn.contains(.reset) ? "reset" : nil
        case .timeout:
            if retryOn.contains(.reset) || retryOn.contains(.gatewayError) || retryOn.contains(.fiveXX) { return "timeout" }
            return nil
        case .response(let status, let grpc):
            if let grpc, let g = GRPCStatus(rawValue: grpc), retryOn.contains(.grpc(g)) { return g.name }
            if retryOn.contains(.status(status)) { return String(status) }
            if status == 502 || status == 503 || status == 504, retryOn.contains(.gatewayError) { return "gateway-error" }
            if status >= 500, retryOn.contains(.fiveXX) { return "5xx" }
            return nil
        }
    }

    /// Whether request parts must be kept for a replay: a retry after the request reached an endpoint
    /// is possible (a retry on a connect failure resends only what was never sent).
    public var needsReplay: Bool {
        attempts > 1 && !retryOn.subtracting([.connectFailure]).isEmpty
    }

    /// Whether the response head alone can already decide against a retry (so it may be streamed):
    /// true unless a gRPC condition is configured and the status might arrive in trailers.
    public var needsTrailers: Bool {
        retryOn.contains { if case .grpc = $0 { return true } else { return false } }
    }
}
