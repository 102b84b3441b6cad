import MeshCore
import NIOCore
import NIOHPACK
import NIOHTTP1

/// The header blocks of the frame-level HTTP/2 connections (RFC 9113 §8.3): checked as they are read,
/// rewritten from HEADERS to HEADERS for an h2 → h2 stream (`request`, `upstreamBlock`, `response`,
/// `clientBlock`), and translated to and from the HTTP/1 types only where the other side speaks
/// HTTP/1.1. HPACK itself stays with NIO's HTTP/2 handler. Each block received is checked
/// (`MeshCore.HTTP2FieldCheck`) in the pass that reads it; each request header meshd sends gets the
/// HPACK indexing `MeshCore.HeaderIndexing` chooses in the pass that writes it.
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

    /// Checks a response's HEADERS block as it reads it (`HTTP2FieldCheck`), and in the same pass
    /// takes its status and what the exchange decides on (`ResponseScan`), and whether the block can
    /// go on to an HTTP/2 client as it is: `clientIndexing` keeps every field's indexing, and no value
    /// has leading or trailing whitespace.
    static func response(_ block: HPACKHeaders, endStream: Bool) throws(HTTP2FieldCheck.Problem) -> H2Response {
        var check = HTTP2FieldCheck(.response)
        var response = H2Response(block: block, endStream: endStream)
        for (name, value, indexing) in block {
            if try check.field(name: name, value: value) != nil {
                // `:status`, three digits (`HTTP2FieldCheck`).
                response.status = Int(value) ?? 0
                continue
            }
            response.fieldCount += 1
            switch name.utf8.count {
            case 11 where response.scan.grpcStatus == nil && name == "grpc-status": response.scan.grpcStatus = value
            case 12 where response.scan.contentType == nil && name == "content-type": response.scan.contentType = value
            case 14 where name == "content-length": response.hasLength = true
            default: break
            }
            if !response.rewrite && (clientIndexing(name, value, indexing) != indexing || trimmed(value) != value) {
                response.rewrite = true
            }
        }
        try check.finish()
        return response
    }

    /// A checked response as an HTTP/1.1 response head. Like NIO's HTTP/2 ↔ HTTP/1 codec, a final
    /// response that may have a body but gives no length says how an HTTP/1.1 client will see it end:
    /// `content-length: 0` when the block ended the stream, chunked otherwise.
    static func http1Head(_ response: H2Response, requestMethod: HTTPMethod) -> HTTPResponseHead {
        var fields: [(String, String)] = []
        fields.reserveCapacity(response.fieldCount + 1)
        for (name, value, _) in response.block where name.utf8.first != UInt8(ascii: ":") { fields.append((name, value)) }
        let status = response.status
        if !response.hasLength && status >= 200 && status != 204 && status != 304 && requestMethod != .HEAD
            && requestMethod != .CONNECT
        {
            fields.append((response.endStream ? "content-length" : "transfer-encoding", response.endStream ? "0" : "chunked"))
        }
        return HTTPResponseHead(version: .http1_1, status: HTTPResponseStatus(statusCode: status), headers: HTTPHeaders(fields))
    }

    /// A checked response's block as an HTTP/2 client gets it: as it came, rebuilt only when a field
    /// needs another indexing (`clientIndexing`) or a value needs trimming (`H2Response.rewrite`).
    static func clientBlock(_ response: H2Response) -> HPACKHeaders {
        guard response.rewrite else { return response.block }
        var out = HPACKHeaders()
        out.reserveCapacity(response.block.count)
        for (name, value, indexing) in response.block {
            let v = trimmed(value)
            out.add(name: name, value: v, indexing: name.utf8.first == UInt8(ascii: ":") ? indexing : clientIndexing(name, v, indexing))
        }
        return out
    }

    /// The HPACK indexing of a response field meshd passes on: its sender's, but never more than
    /// `MeshCore.HeaderIndexing` allows — a per-response value (`content-length`, `etag`,
    /// `set-cookie`…) is not added to the client connection's table whatever its sender chose, and a
    /// never-indexed field stays so (RFC 7541 §7.1.3). A field its sender did not index is not
    /// indexed either: applying meshd's policy both ways rebuilt nginx's every block, 4 k
    /// instructions per stream more than passing the block on.
    static func clientIndexing(_ name: String, _ value: String, _ sent: HPACKIndexing) -> HPACKIndexing {
        if sent == .neverIndexed { return .neverIndexed }
        switch indexing(name, value) {
        case .neverIndexed: return .neverIndexed
        case .nonIndexable: return .nonIndexable
        case .indexable: return sent
        }
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

/// A request's HEADERS block, checked (`HTTP2FieldCheck`) in the one pass that also took its
/// pseudo-headers and the facts the proxy handler and an HTTP/1.1 translation need. The block itself
/// is kept as it came: a request that goes on over HTTP/2 is rewritten from it
/// (`HTTP2Conversion.upstreamBlock`), with no HTTP/1 types on the way.
struct H2Request {
    var block: HPACKHeaders
    var method: HTTPMethod
    /// `:path` (a CONNECT's target is its `:authority`).
    var uri: String
    var authority: String?
    var endStream: Bool
    /// A `content-length` field.
    var hasLength = false
    /// Regular fields.
    var fieldCount = 0
}

/// A response's HEADERS block from an HTTP/2 upstream, checked (`HTTP2Conversion.response`), with
/// what the proxy handler decides on; the block goes on to an HTTP/2 client as it came
/// (`HTTP2Conversion.clientBlock`).
struct H2Response {
    var block: HPACKHeaders
    var status = 0
    var endStream: Bool
    var scan = ResponseScan()
    var hasLength = false
    var fieldCount = 0
    /// Some field needs another HPACK indexing (`HTTP2Conversion.clientIndexing`), or some value
    /// trimming (RFC 9113 §8.2.1), before it goes on.
    var rewrite = false
}

extension HTTP2Conversion {
    /// Checks a request's HEADERS block as it reads it (`HTTP2FieldCheck`).
    static func request(_ block: HPACKHeaders, endStream: Bool) throws(HTTP2FieldCheck.Problem) -> H2Request {
        var check = HTTP2FieldCheck(.request)
        var method = ""
        var path = ""
        var authority: String?
        var hasLength = false
        var count = 0
        for (name, value, _) in block {
            switch try check.field(name: name, value: value) {
            case nil:
                count += 1
                if name.utf8.count == 14 && name == "content-length" { hasLength = true }
            case .method: method = value
            case .path: path = value
            case .authority: authority = value
            case .scheme, .status: break
            }
        }
        try check.finish()
        let httpMethod = HTTPMethod(rawValue: method)
        return H2Request(
            block: block, method: httpMethod, uri: httpMethod == .CONNECT ? authority ?? "" : path, authority: authority,
            endStream: endStream, hasLength: hasLength, fieldCount: count)
    }

    /// A checked request as an HTTP/1.1 request head (as NIO's HTTP/2 ↔ HTTP/1 codec makes it), for an
    /// HTTP/1.1 upstream: its regular fields in order (Host is added by the proxy handler from the
    /// authority it routed on, when the block has none); a request whose method may carry a body and
    /// that gives no length is chunked (or `content-length: 0` when the block ended the stream).
    static func http1Head(_ request: H2Request) -> HTTPRequestHead {
        var fields: [(String, String)] = []
        fields.reserveCapacity(request.fieldCount + 1)
        switch request.method {
        case .GET, .HEAD, .DELETE, .CONNECT, .TRACE: break
        default:
            if !request.hasLength {
                fields.append((request.endStream ? "content-length" : "transfer-encoding", request.endStream ? "0" : "chunked"))
            }
        }
        for (name, value, _) in request.block where name.utf8.first != UInt8(ascii: ":") { fields.append((name, value)) }
        return HTTPRequestHead(version: .http1_1, method: request.method, uri: request.uri, headers: HTTPHeaders(fields))
    }

    /// A block made for an HTTP/2 upstream (`upstreamBlock`) as an HTTP/1.1 head: the pseudo-headers
    /// as the request line and Host, the fields as they are.
    static func http1Head(forwarded block: HPACKHeaders) -> HTTPRequestHead {
        var method = "GET"
        var uri = "/"
        var fields: [(String, String)] = []
        fields.reserveCapacity(block.count)
        for (name, value, _) in block {
            switch name {
            case ":method": method = value
            case ":path": uri = value
            case ":authority": fields.append(("host", value))
            case ":scheme": break
            default: fields.append((name, value))
            }
        }
        return HTTPRequestHead(version: .http1_1, method: HTTPMethod(rawValue: method), uri: uri, headers: HTTPHeaders(fields))
    }

    /// The HEADERS block an HTTP/2 upstream gets for a request that came on HTTP/2: the four
    /// pseudo-headers (`:authority` the one meshd routed on, `:path` the rewritten target if there
    /// is one), the client's regular fields in order except `host` (carried by `:authority`) and
    /// those `dropped` names, then the `added` fields (but `host`). Values lose leading and trailing whitespace
    /// (RFC 9113 §8.2.1), and each field gets meshd's HPACK indexing (`indexing`) — a field the
    /// client sent never-indexed stays so (RFC 7541 §7.1.3).
    static func upstreamBlock(
        _ request: H2Request, authority: Substring, uri: String?, dropped: [String], added: [(String, String)]
    ) -> HPACKHeaders {
        var out = HPACKHeaders()
        out.reserveCapacity(request.fieldCount + added.count + 4)
        out.add(name: ":method", value: request.method.rawValue)
        out.add(name: ":scheme", value: "http")
        out.add(name: ":authority", value: String(authority))
        if request.method != .CONNECT { out.add(name: ":path", value: uri ?? request.uri, indexing: .nonIndexable) }
        for (name, value, indexing) in request.block where name.utf8.first != UInt8(ascii: ":") {
            if name.utf8.count == 4 && name == "host" { continue }
            if !dropped.isEmpty && dropped.contains(where: { HeaderPolicy.equalsIgnoringASCIICase(name, $0) }) { continue }
            let v = trimmed(value)
            out.add(name: name, value: v, indexing: indexing == .neverIndexed ? .neverIndexed : Self.indexing(name, v))
        }
        for (name, value) in added where !(name.utf8.count == 4 && name == "host") {
            out.add(name: name, value: value, indexing: Self.indexing(name, value))
        }
        return out
    }

    /// A block whose per-request headers are indexed for their names this time
    /// (`MeshCore.HeaderNamePriming`): the indexing of each field again, with `primeNames`.
    static func primed(_ block: HPACKHeaders) -> HPACKHeaders {
        var out = HPACKHeaders()
        out.reserveCapacity(block.count)
        for (name, value, indexing) in block {
            let primed =
                name.utf8.first == UInt8(ascii: ":") || indexing == .neverIndexed ? indexing : Self.indexing(name, value, primeNames: true)
            out.add(name: name, value: value, indexing: primed)
        }
        return out
    }

    /// A value without leading or trailing SP or HTAB (a new string only when it has some).
    static func trimmed(_ value: String) -> String {
        guard let first = value.utf8.first, let last = value.utf8.last,
            first == 0x20 || first == 0x09 || last == 0x20 || last == 0x09
        else { return value }
        return value.trimmingCharacters(in: " \t")
    }
}

extension HTTP2Conversion {
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
