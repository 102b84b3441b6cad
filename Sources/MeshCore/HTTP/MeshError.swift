/// Replies that meshd itself produces, each with its status, the `x-meshd-error` header value and the
/// `kind` label of `meshd_errors_total`.
public enum MeshError: String, Sendable, CaseIterable, Error {
    /// No route matches the request's authority / path / method / headers.
    case noRoute = "no-route"
    /// The route's service has no endpoint.
    case noEndpoints = "no-endpoints"
    /// Connecting to the endpoint was refused, unreachable or timed out.
    case connectFailed = "connect-failed"
    /// The endpoint did not answer within the route's timeout.
    case upstreamTimeout = "upstream-timeout"
    /// The endpoint closed or reset the connection before a complete response head.
    case upstreamReset = "upstream-reset"
    /// The endpoint sent something that is not valid HTTP.
    case upstreamProtocol = "upstream-protocol"
    /// The request is not valid HTTP/1.1.
    case badRequest = "bad-request"
    /// The request head is larger than `http.maxHeaderBytes`.
    case headersTooLarge = "headers-too-large"
    /// The request line is longer than `http.maxRequestLineBytes`.
    case uriTooLong = "uri-too-long"
    /// The client did not finish its request head within `http.headerReadTimeout`.
    case headerTimeout = "header-timeout"
    /// Node mode: the connection's source address is outside `node.allowedSources`.
    case sourceNotAllowed = "source-not-allowed"
    /// Node mode inbound: `x-meshd-dst` is missing, malformed or outside `node.podCIDRs`.
    case destinationNotAllowed = "destination-not-allowed"
    /// The listener is at `http.maxConnections`.
    case connectionLimit = "connection-limit"
    /// Circuit breaker: the service is at `limits.maxConnections`.
    case overflowConnections = "overflow-connections"
    /// Circuit breaker: the service is at `limits.maxPending` requests waiting for a connection.
    case overflowPending = "overflow-pending"
    /// Circuit breaker: the service is at `limits.maxRequests` requests in flight.
    case overflowRequests = "overflow-requests"
    /// The route's rate limit is exhausted (429 with `retry-after`).
    case rateLimited = "rate-limited"
    /// The exchange saw no byte in either direction for the service's idle timeout.
    case idleTimeout = "idle-timeout"
    /// Authorization: the caller may not call this workload (or path), or (node mode) has no identity
    /// for a service that needs mTLS.
    case forbidden = "forbidden"

    public var status: Int {
        switch self {
        case .noRoute: return 404
        case .noEndpoints, .connectFailed: return 503
        case .upstreamTimeout: return 504
        case .upstreamReset, .upstreamProtocol: return 502
        case .badRequest: return 400
        case .headersTooLarge: return 431
        case .uriTooLong: return 414
        case .headerTimeout: return 408
        case .sourceNotAllowed, .destinationNotAllowed, .forbidden: return 403
        case .connectionLimit, .overflowConnections, .overflowPending, .overflowRequests: return 503
        case .rateLimited: return 429
        case .idleTimeout: return 504
        }
    }

    public var reason: String {
        switch status {
        case 400: return "Bad Request"
        case 403: return "Forbidden"
        case 404: return "Not Found"
        case 408: return "Request Timeout"
        case 414: return "URI Too Long"
        case 429: return "Too Many Requests"
        case 431: return "Request Header Fields Too Large"
        case 502: return "Bad Gateway"
        case 503: return "Service Unavailable"
        case 504: return "Gateway Timeout"
        default: return "Error"
        }
    }

    /// The header every reply produced by meshd carries.
    public static let headerName = "x-meshd-error"
}
