import MeshCore
import NIOHPACK
import NIOHTTP1

/// What one pass over a message's headers found.
struct HeaderScan {
    var chunked = false
    var expectContinue = false
    /// Some header must be removed before forwarding.
    var hasHopByHop = false
    var forwardedFor: String?
    var forwardedForCount = 0
    /// `TE: trailers` (gRPC needs it end to end; RFC 9113 §8.2.2 allows exactly this TE in HTTP/2).
    var teTrailers = false
    /// `content-type: application/grpc…`.
    var grpc = false
    var grpcTimeout: String?
    /// `x-meshd-orig-proto`: an HTTP/1.1 request another meshd carried over HTTP/2.
    var originalProtocol = false
    /// `Host` fields seen (RFC 9112 §3.2: more than one is a 400), and the first one's value.
    var hostCount = 0
    var host: String?
    /// A `Content-Length` that is not a decimal number meshd (and most peers) can hold: past 2^63 - 1.
    var contentLengthTooLarge = false
    /// `x-forwarded-client-cert`: only meshd sets it (from the mTLS peer); a client's own is removed.
    var clientCert = false
    /// `x-meshd-dst`: the pod a calling meshd picked (for a node proxy); replaced outbound, removed
    /// inbound.
    var destination = false
    /// Request identity and trace context (the first of each), for `TraceDecision`.
    var trace = TraceDecision.Incoming()
    /// An `Upgrade` field, and `upgrade` among the `Connection` options: together, an upgrade request
    /// as llhttp (NIO's parser) sees one.
    var upgrade = false
    var connectionUpgrade = false
    var isUpgradeRequest: Bool { upgrade && connectionUpgrade }
}

extension HeaderScan {
    /// One field of the message, in order.
    mutating func add(name: String, value: String) {
        switch name.utf8.count {
        case 6 where HeaderPolicy.equalsIgnoringASCIICase(name, "expect"):
            expectContinue = expectContinue || HeaderPolicy.listContains(value, token: "100-continue")
        case 2 where HeaderPolicy.equalsIgnoringASCIICase(name, "te"):
            teTrailers = teTrailers || HeaderPolicy.listContains(value, token: "trailers")
            hasHopByHop = true
        case 12 where HeaderPolicy.equalsIgnoringASCIICase(name, "content-type"):
            grpc = GRPC.isGRPC(contentType: value)
        case 4 where HeaderPolicy.equalsIgnoringASCIICase(name, "host"):
            if hostCount == 0 { host = value }
            hostCount += 1
        case 14 where HeaderPolicy.equalsIgnoringASCIICase(name, "content-length"):
            // NIO's parser takes any 64-bit unsigned length; a peer with signed lengths would not.
            if value.utf8.count >= 19 && Int64(value.trimmingCharacters(in: " \t")) == nil { contentLengthTooLarge = true }
        case 23 where HeaderPolicy.equalsIgnoringASCIICase(name, HeaderPolicy.clientCertHeader):
            clientCert = true
        case 12 where HeaderPolicy.equalsIgnoringASCIICase(name, "grpc-timeout"):
            grpcTimeout = value
        case 12 where HeaderPolicy.equalsIgnoringASCIICase(name, "x-request-id"):
            if trace.requestID == nil { trace.requestID = value }
        case 11 where HeaderPolicy.equalsIgnoringASCIICase(name, "traceparent"):
            if trace.traceparent == nil { trace.traceparent = Substring(value) }
        case 11 where HeaderPolicy.equalsIgnoringASCIICase(name, HeaderPolicy.destinationHeader):
            destination = true
        case 2 where HeaderPolicy.equalsIgnoringASCIICase(name, "b3"):
            if trace.b3 == nil { trace.b3 = Substring(value) }
        case 12 where HeaderPolicy.equalsIgnoringASCIICase(name, "x-b3-traceid"):
            if trace.b3TraceID == nil { trace.b3TraceID = Substring(value) }
        case 12 where HeaderPolicy.equalsIgnoringASCIICase(name, "x-b3-sampled"):
            if trace.b3Sampled == nil { trace.b3Sampled = Substring(value) }
        case 18 where HeaderPolicy.equalsIgnoringASCIICase(name, HeaderPolicy.originalProtocolHeader):
            originalProtocol = true
        case 15 where HeaderPolicy.equalsIgnoringASCIICase(name, "x-forwarded-for"):
            forwardedFor = value
            forwardedForCount += 1
        case 7 where HeaderPolicy.equalsIgnoringASCIICase(name, "upgrade"):
            upgrade = true
            hasHopByHop = true
        case 10 where HeaderPolicy.equalsIgnoringASCIICase(name, "connection"):
            connectionUpgrade = connectionUpgrade || HeaderPolicy.listContains(value, token: "upgrade")
            hasHopByHop = true
        case 17 where HeaderPolicy.equalsIgnoringASCIICase(name, "transfer-encoding"):
            chunked = chunked || HeaderPolicy.listContains(value, token: "chunked")
            hasHopByHop = true
        default:
            if HeaderPolicy.isHopByHop(name) { hasHopByHop = true }
        }
    }
}

extension HPACKHeaders {
    /// `HTTPHeaders.meshScan` over an HTTP/2 request's regular fields (its pseudo-headers are the
    /// request line, which `HTTP2Conversion.request` took).
    func meshScan() -> HeaderScan {
        var scan = HeaderScan()
        for (name, value, _) in self where name.utf8.first != UInt8(ascii: ":") { scan.add(name: name, value: value) }
        return scan
    }
}

/// The header lookups the proxy handler makes on a request (a route's header match, a balancer's
/// hash key), on the fields of either protocol.
protocol HeaderLookup {
    func first(name: String) -> String?
    subscript(name: String) -> [String] { get }
}

extension HTTPHeaders: HeaderLookup {}
extension HPACKHeaders: HeaderLookup {}

/// What a response head carries that the exchange decides on (the first of each field).
struct ResponseScan {
    var grpcStatus: String?
    var contentType: String?
}

extension HTTPHeaders {
    /// One pass over a response's headers for the fields `ResponseScan` holds (two
    /// `HTTPHeaders.first(name:)` would make two).
    func meshResponseScan() -> ResponseScan {
        var scan = ResponseScan()
        for (name, value) in self {
            switch name.utf8.count {
            case 11 where scan.grpcStatus == nil && HeaderPolicy.equalsIgnoringASCIICase(name, literal: "grpc-status"):
                scan.grpcStatus = value
            case 12 where scan.contentType == nil && HeaderPolicy.equalsIgnoringASCIICase(name, literal: "content-type"):
                scan.contentType = value
            default: break
            }
        }
        return scan
    }

    /// One pass over the headers, no allocation: framing, `Expect`, hop-by-hop presence, XFF, gRPC
    /// (content type, `grpc-timeout`) and meshd's original-protocol mark.
    func meshScan() -> HeaderScan {
        var scan = HeaderScan()
        for (name, value) in self { scan.add(name: name, value: value) }
        return scan
    }

    /// Removes leading and trailing whitespace (SP, HTAB) from field values, which RFC 9110 §5.5
    /// excludes from a value and RFC 9113 §8.2.1 forbids in HTTP/2: an HTTP/1.1 peer's
    /// `Server: app ` must not reach an HTTP/2 peer as it is (it would reset the stream).
    /// Rebuilds the headers only when some value needs it.
    mutating func meshTrimValueWhitespace() {
        func padded(_ v: String) -> Bool {
            guard let first = v.utf8.first, let last = v.utf8.last else { return false }
            return first == 0x20 || first == 0x09 || last == 0x20 || last == 0x09
        }
        guard contains(where: { padded($0.value) }) else { return }
        self = HTTPHeaders(map { ($0.name, padded($0.value) ? $0.value.trimmingCharacters(in: [" ", "\t"]) : $0.value) })
    }

    /// Removes hop-by-hop headers (the fixed set, names listed in `Connection`, and `Expect` when
    /// asked), and re-applies chunked framing when the message had it, after a request's `scan` found
    /// some.
    mutating func meshStripHopByHop(_ scan: HeaderScan, removeExpect: Bool) {
        guard scan.hasHopByHop || removeExpect else { return }
        meshStripHopByHop(removeExpect: removeExpect)
    }

    /// Removes hop-by-hop headers (the fixed set, names listed in `Connection`, and `Expect` when
    /// asked) and re-applies chunked framing (and `TE: trailers`) when the message had it. One pass
    /// finds them, without a `HeaderScan`; when there are any, a second one copies the rest into a
    /// new list (the copy a first in-place removal would make of the shared list anyway). It runs on
    /// most responses: an HTTP/1.1 server's `Connection: keep-alive`. No Foundation; the new list is
    /// the one allocation, plus a list of names only when `Connection` names a field outside the
    /// fixed set.
    mutating func meshStripHopByHop(removeExpect: Bool) {
        var found = false
        var chunked = false
        var teTrailers = false
        // `Connection` options that are not in the fixed set (`close`, `x-custom`): fields so named go too.
        var options: [Substring] = []
        for (name, value) in self {
            let count = name.utf8.count
            if count == 6 {
                if removeExpect && HeaderPolicy.equalsIgnoringASCIICase(name, "expect") { found = true }
                continue
            }
            guard HeaderPolicy.isHopByHop(name) else { continue }
            found = true
            switch count {
            case 10 where HeaderPolicy.equalsIgnoringASCIICase(name, "connection"):
                HeaderPolicy.forEachListItem(value) { item in
                    if HeaderPolicy.isHopByHop(String(item)) { return }
                    if !options.contains(where: { HeaderPolicy.equalsFoldingASCIICase($0, item) }) { options.append(item) }
                }
            case 17:  // transfer-encoding
                chunked = chunked || HeaderPolicy.listContains(value, token: "chunked")
            case 2:  // te
                teTrailers = teTrailers || HeaderPolicy.listContains(value, token: "trailers")
            default: break
            }
        }
        guard found else { return }  // (`options` come from a `Connection` field, which is found)
        var kept: [(String, String)] = []
        kept.reserveCapacity(count + 2)
        for (name, value) in self {
            if HeaderPolicy.isHopByHop(name) { continue }
            if removeExpect && name.utf8.count == 6 && HeaderPolicy.equalsIgnoringASCIICase(name, "expect") { continue }
            if !options.isEmpty && options.contains(where: { HeaderPolicy.equalsFoldingASCIICase($0, name[...]) }) { continue }
            kept.append((name, value))
        }
        if chunked { kept.append(("transfer-encoding", "chunked")) }
        if teTrailers { kept.append(("te", "trailers")) }
        self = HTTPHeaders(kept)
    }
}
