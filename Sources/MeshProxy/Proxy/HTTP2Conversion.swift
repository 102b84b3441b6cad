import MeshCore
import NIOCore
import NIOHPACK
import NIOHTTP1

/// The HTTP/1 message types the proxy handler works with, as the header blocks of an upstream HTTP/2
/// stream (RFC 9113 §8.3), for the frame-level HTTP/2 connections. HPACK itself stays with NIO's
/// HTTP/2 handler. Each block received is checked (`MeshCore.HTTP2FieldCheck`) in the pass that
/// reads it; each header sent gets the HPACK indexing `MeshCore.HeaderIndexing` chooses in the pass
/// that writes it.
/// A received block's fields go into the HTTP/1 head as one list (`HTTPHeaders([(String, String)])`)
/// rather than one `add` each: `add` checks every name for ASCII byte by byte, and these names have
/// just passed `HTTP2FieldCheck` (lowercase tokens).
enum HTTP2Conversion {
    /// A request head as a HEADERS block: the four pseudo-headers first (`:authority` from Host),
    /// names lowercased, connection-specific fields (RFC 9113 §8.2.2) left out, `te` only as
    /// `trailers`.
    /// `primeNames`: the per-request headers are indexed for their names (`MeshCore.HeaderNamePriming`).
    static func requestHeaders(_ head: HTTPRequestHead, scheme: String = "http", primeNames: Bool = false) -> HPACKHeaders {
        var out = HPACKHeaders()
        out.reserveCapacity(head.headers.count + 3)
        out.add(name: ":method", value: head.method.rawValue)
        out.add(name: ":scheme", value: scheme)
        var authority: String?
        for (name, value) in head.headers where name.utf8.count == 4 && HeaderPolicy.equalsIgnoringASCIICase(name, "host") {
            authority = value
            break
        }
        if let authority { out.add(name: ":authority", value: authority) }
        if head.method != .CONNECT { out.add(name: ":path", value: head.uri, indexing: .nonIndexable) }
        appendFields(head.headers, to: &out, primeNames: primeNames)
        return out
    }

    /// Trailers as the block that ends a stream.
    static func trailers(_ trailers: HTTPHeaders) -> HPACKHeaders {
        var out = HPACKHeaders()
        out.reserveCapacity(trailers.count)
        appendFields(trailers, to: &out)
        return out
    }

    /// A response's HEADERS block as a response head, checked as it is read (`HTTP2FieldCheck`). Like
    /// NIO's HTTP/2 ↔ HTTP/1 codec, a final response that may have a body but gives no length says
    /// how an HTTP/1.1 client will see it end: `content-length: 0` when the block ends the stream,
    /// chunked otherwise.
    static func responseHead(
        _ block: HPACKHeaders, requestMethod: HTTPMethod, endStream: Bool
    ) throws(HTTP2FieldCheck.Problem) -> HTTPResponseHead {
        var check = HTTP2FieldCheck(.response)
        var status = 0
        var fields: [(String, String)] = []
        fields.reserveCapacity(block.count)
        var hasLength = false
        for (name, value, _) in block {
            if try check.field(name: name, value: value) != nil {
                // `:status`, three digits (`HTTP2FieldCheck`).
                status = Int(value) ?? 0
                continue
            }
            if name.utf8.count == 14 && name == "content-length" { hasLength = true }
            fields.append((name, value))
        }
        try check.finish()
        if !hasLength && status >= 200 && status != 204 && status != 304 && requestMethod != .HEAD && requestMethod != .CONNECT {
            fields.append((endStream ? "content-length" : "transfer-encoding", endStream ? "0" : "chunked"))
        }
        return HTTPResponseHead(version: .http2, status: HTTPResponseStatus(statusCode: status), headers: HTTPHeaders(fields))
    }

    /// A trailers block as HTTP/1 trailers, checked as it is read (no pseudo-headers there).
    static func httpTrailers(_ block: HPACKHeaders) throws(HTTP2FieldCheck.Problem) -> HTTPHeaders {
        var check = HTTP2FieldCheck(.trailers)
        var fields: [(String, String)] = []
        fields.reserveCapacity(block.count)
        for (name, value, _) in block {
            _ = try check.field(name: name, value: value)
            fields.append((name, value))
        }
        return HTTPHeaders(fields)
    }

    /// HTTP/1 fields into an HTTP/2 block: names lowercased, connection-specific fields left out, each
    /// with its HPACK indexing.
    static func appendFields(_ fields: HTTPHeaders, to out: inout HPACKHeaders, primeNames: Bool = false) {
        for (name, value) in fields {
            switch fieldKind(name, value: value) {
            case .drop: continue
            case .keep: out.add(name: name, value: value, indexing: indexing(name, value, primeNames: primeNames))
            case .lowercase:
                let lower = HeaderPolicy.asciiLowercased(name)
                out.add(name: lower, value: value, indexing: indexing(lower, value, primeNames: primeNames))
            }
        }
    }

    enum FieldKind { case keep, lowercase, drop }

    /// What becomes of an HTTP/1 field in an HTTP/2 block.
    static func fieldKind(_ name: String, value: String) -> FieldKind {
        let upper = name.meshWithUTF8 { bytes in
            for c in bytes where c &- UInt8(ascii: "A") < 26 { return true }
            return false
        }
        switch name.utf8.count {
        case 2 where HeaderPolicy.equalsIgnoringASCIICase(name, "te"):
            return HeaderPolicy.equalsIgnoringASCIICase(value, "trailers") ? (upper ? .lowercase : .keep) : .drop
        case 4 where HeaderPolicy.equalsIgnoringASCIICase(name, "host"):
            return .drop
        case 7 where HeaderPolicy.equalsIgnoringASCIICase(name, "upgrade"):
            return .drop
        case 10 where HeaderPolicy.equalsIgnoringASCIICase(name, "connection") || HeaderPolicy.equalsIgnoringASCIICase(name, "keep-alive"):
            return .drop
        case 16 where HeaderPolicy.equalsIgnoringASCIICase(name, "proxy-connection"):
            return .drop
        case 17 where HeaderPolicy.equalsIgnoringASCIICase(name, "transfer-encoding"):
            return .drop
        default:
            return upper ? .lowercase : .keep
        }
    }

    /// The HPACK indexing `MeshCore.HeaderIndexing` chooses for a header meshd sends: per-request
    /// values (`x-request-id`, `traceparent`, `:path`) would fill both ends' dynamic tables with
    /// entries nothing matches again, and make every lookup of the encoder scan them (but one now and
    /// then, `primeNames`, keeps their names in the table).
    static func indexing(_ name: String, _ value: String, primeNames: Bool = false) -> HPACKIndexing {
        switch HeaderIndexing.of(name: name, valueLength: value.utf8.count, primeNames: primeNames) {
        case .index: return .indexable
        case .noIndex: return .nonIndexable
        case .neverIndex: return .neverIndexed
        }
    }
}

extension HTTP2Conversion {
    /// A request's HEADERS block as a request head (as NIO's HTTP/2 ↔ HTTP/1 codec makes it), checked
    /// as it is read (`HTTP2FieldCheck`): Host from `:authority` unless the block has one; a request
    /// whose method may carry a body and that gives no length is chunked (or `content-length: 0`
    /// when the block ends the stream). A CONNECT's target is its `:authority`.
    static func requestHead(_ block: HPACKHeaders, endStream: Bool) throws(HTTP2FieldCheck.Problem) -> HTTPRequestHead {
        var check = HTTP2FieldCheck(.request)
        var method = ""
        var path = ""
        var authority: String?
        var hasHost = false
        var hasLength = false
        var count = 0
        for (name, value, _) in block {
            switch try check.field(name: name, value: value) {
            case nil:
                count += 1
                switch name.utf8.count {
                case 4 where name == "host": hasHost = true
                case 14 where name == "content-length": hasLength = true
                default: break
                }
            case .method: method = value
            case .path: path = value
            case .authority: authority = value
            case .scheme, .status: break
            }
        }
        try check.finish()
        let httpMethod = HTTPMethod(rawValue: method)
        let uri = httpMethod == .CONNECT ? authority ?? "" : path
        var fields: [(String, String)] = []
        fields.reserveCapacity(count + 2)
        if !hasHost, let authority { fields.append(("host", authority)) }
        switch httpMethod {
        case .GET, .HEAD, .DELETE, .CONNECT, .TRACE: break
        default:
            if !hasLength { fields.append((endStream ? "content-length" : "transfer-encoding", endStream ? "0" : "chunked")) }
        }
        for (name, value, _) in block where name.utf8.first != UInt8(ascii: ":") { fields.append((name, value)) }
        return HTTPRequestHead(version: .http2, method: httpMethod, uri: uri, headers: HTTPHeaders(fields))
    }

    /// A response head as a HEADERS block: `:status` first, names lowercased, connection-specific
    /// fields left out.
    static func responseHeaders(_ head: HTTPResponseHead) -> HPACKHeaders {
        var out = HPACKHeaders()
        out.reserveCapacity(head.headers.count + 1)
        out.add(name: ":status", value: String(head.status.code))
        appendFields(head.headers, to: &out)
        return out
    }

}
