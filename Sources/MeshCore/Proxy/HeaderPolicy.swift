/// What meshd does to headers as a request or response crosses it (RFC 9110 §7.6.1).
public enum HeaderPolicy {
    /// Headers that describe one connection and are never forwarded.
    public static let hopByHop: Set<String> = [
        "connection", "keep-alive", "proxy-connection", "te", "transfer-encoding", "upgrade",
        "proxy-authenticate", "proxy-authorization", "trailer",
    ]

    /// The header through which an outbound meshd names the workload address it picked; a node
    /// proxy's inbound listener forwards to it. Removed before the request reaches the application.
    public static let destinationHeader = "x-meshd-dst"

    /// Lowercased names to remove: the fixed hop-by-hop set plus every token of `Connection`.
    public static func namesToRemove(connectionHeaderValues: [String]) -> Set<String> {
        var names = hopByHop
        for value in connectionHeaderValues {
            for token in value.split(separator: ",") {
                let t = token.trimmingASCIIWhitespace().lowercased()
                if !t.isEmpty { names.insert(t) }
            }
        }
        return names
    }

    /// `x-forwarded-for` after appending `client`: `existing, client` or just `client`.
    public static func appendingForwardedFor(existing: String?, client: String) -> String {
        guard let existing, !existing.isEmpty else { return client }
        return existing + ", " + client
    }

    /// The status class label: `2xx`, `5xx`...
    public static func statusClass(_ status: Int) -> String {
        switch status {
        case 100..<200: return "1xx"
        case 200..<300: return "2xx"
        case 300..<400: return "3xx"
        case 400..<500: return "4xx"
        default: return "5xx"
        }
    }
}
