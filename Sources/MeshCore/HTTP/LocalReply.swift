/// A response meshd produces itself (no route, connect failure, timeout, overflow, malformed request…),
/// decided once for every protocol; meshd's one writer puts it on the wire as HTTP/1.1, as HTTP/2, or
/// as a gRPC status.
///
/// - Plain HTTP: the error's status, `x-meshd-error`, and `meshd: <detail>` as a text body.
/// - gRPC over HTTP/2: "trailers-only", one HEADERS frame with `:status 200`, `grpc-status` and
///   `grpc-message` that ends the stream (`trailersOnly`).
/// - gRPC over HTTP/1.1: a 200 head, then the status in the trailers.
public struct LocalReply: Sendable, Equatable {
    public struct Field: Sendable, Equatable {
        public var name: String
        public var value: String
        public init(_ name: String, _ value: String) {
            self.name = name
            self.value = value
        }
    }

    public var status: Int
    public var reason: String
    public var headers: [Field]
    /// The body, empty for gRPC.
    public var body: String
    /// Trailers after the (empty) body; nil for none.
    public var trailers: [Field]?
    /// The head alone ends the stream (HTTP/2 gRPC): headers carry the gRPC status.
    public var trailersOnly: Bool
    /// The gRPC status the reply carries (nil for a plain HTTP reply).
    public var grpcStatus: Int?

    /// meshd's reply to a request it cannot serve. `close`: the connection ends after it (adds
    /// `connection: close` on HTTP/1.1). `retryAfter`: seconds, for 429.
    public static func error(
        _ error: MeshError, detail: String, grpc: Bool, http2: Bool, close: Bool, retryAfter: Int? = nil
    ) -> LocalReply {
        if grpc {
            var headers = [Field("content-type", "application/grpc"), Field(MeshError.headerName, error.rawValue)]
            let status = Self.grpcStatusFields(error, detail: detail)
            if http2 {
                headers += status
                return LocalReply(
                    status: 200, reason: "OK", headers: headers, body: "", trailers: nil, trailersOnly: true,
                    grpcStatus: error.grpcStatus)
            }
            if close { headers.append(Field("connection", "close")) }
            return LocalReply(
                status: 200, reason: "OK", headers: headers, body: "", trailers: status, trailersOnly: false,
                grpcStatus: error.grpcStatus)
        }
        let body = "meshd: \(detail)\n"
        var headers = [
            Field(MeshError.headerName, error.rawValue), Field("content-type", "text/plain; charset=utf-8"),
            Field("content-length", String(body.utf8.count)),
        ]
        if let retryAfter { headers.append(Field("retry-after", String(retryAfter))) }
        if close && !http2 { headers.append(Field("connection", "close")) }
        return LocalReply(
            status: error.status, reason: error.reason, headers: headers, body: body, trailers: nil, trailersOnly: false,
            grpcStatus: nil)
    }

    /// The trailers that end a gRPC call whose response is already under way with meshd's error.
    public static func grpcTrailers(_ error: MeshError, detail: String) -> [Field] {
        grpcStatusFields(error, detail: detail) + [Field(MeshError.headerName, error.rawValue)]
    }

    static func grpcStatusFields(_ error: MeshError, detail: String) -> [Field] {
        [Field("grpc-status", String(error.grpcStatus)), Field("grpc-message", GRPC.percentEncode("meshd: " + detail))]
    }
}
