import MeshCore
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
    /// `Host` fields seen (RFC 9112 §3.2: more than one is a 400).
    var hostCount = 0
    /// A `Content-Length` that is not a decimal number meshd (and most peers) can hold: past 2^63 - 1.
    var contentLengthTooLarge = false
    /// `x-forwarded-client-cert`: only meshd sets it (from the mTLS peer); a client's own is removed.
    var clientCert = false
    /// Request identity and trace context (the first of each), for `TraceDecision`.
    var trace = TraceDecision.Incoming()
    /// An `Upgrade` field, and `upgrade` among the `Connection` options: together, an upgrade request
    /// as llhttp (NIO's parser) sees one.
    var upgrade = false
    var connectionUpgrade = false
    var isUpgradeRequest: Bool { upgrade && connectionUpgrade }
}

extension HTTPHeaders {
    /// One pass over the headers, no allocation: framing, `Expect`, hop-by-hop presence, XFF, gRPC
    /// (content type, `grpc-timeout`) and meshd's original-protocol mark.
    func meshScan() -> HeaderScan {
        var scan = HeaderScan()
        for (name, value) in self {
            switch name.utf8.count {
            case 6 where HeaderPolicy.equalsIgnoringASCIICase(name, "expect"):
                scan.expectContinue = scan.expectContinue || HeaderPolicy.listContains(value, token: "100-continue")
            case 2 where HeaderPolicy.equalsIgnoringASCIICase(name, "te"):
                scan.teTrailers = scan.teTrailers || HeaderPolicy.listContains(value, token: "trailers")
                scan.hasHopByHop = true
            case 12 where HeaderPolicy.equalsIgnoringASCIICase(name, "content-type"):
                scan.grpc = GRPC.isGRPC(contentType: value)
            case 4 where HeaderPolicy.equalsIgnoringASCIICase(name, "host"):
                scan.hostCount += 1
            case 14 where HeaderPolicy.equalsIgnoringASCIICase(name, "content-length"):
                // NIO's parser takes any 64-bit unsigned length; a peer with signed lengths would not.
                if value.utf8.count >= 19 && Int64(value.trimmingCharacters(in: " \t")) == nil { scan.contentLengthTooLarge = true }
            case 23 where HeaderPolicy.equalsIgnoringASCIICase(name, HeaderPolicy.clientCertHeader):
                scan.clientCert = true
            case 12 where HeaderPolicy.equalsIgnoringASCIICase(name, "grpc-timeout"):
                scan.grpcTimeout = value
            case 12 where HeaderPolicy.equalsIgnoringASCIICase(name, "x-request-id"):
                if scan.trace.requestID == nil { scan.trace.requestID = Substring(value) }
            case 11 where HeaderPolicy.equalsIgnoringASCIICase(name, "traceparent"):
                if scan.trace.traceparent == nil { scan.trace.traceparent = Substring(value) }
            case 2 where HeaderPolicy.equalsIgnoringASCIICase(name, "b3"):
                if scan.trace.b3 == nil { scan.trace.b3 = Substring(value) }
            case 12 where HeaderPolicy.equalsIgnoringASCIICase(name, "x-b3-traceid"):
                if scan.trace.b3TraceID == nil { scan.trace.b3TraceID = Substring(value) }
            case 12 where HeaderPolicy.equalsIgnoringASCIICase(name, "x-b3-sampled"):
                if scan.trace.b3Sampled == nil { scan.trace.b3Sampled = Substring(value) }
            case 18 where HeaderPolicy.equalsIgnoringASCIICase(name, HeaderPolicy.originalProtocolHeader):
                scan.originalProtocol = true
            case 15 where HeaderPolicy.equalsIgnoringASCIICase(name, "x-forwarded-for"):
                scan.forwardedFor = value
                scan.forwardedForCount += 1
            case 7 where HeaderPolicy.equalsIgnoringASCIICase(name, "upgrade"):
                scan.upgrade = true
                scan.hasHopByHop = true
            case 10 where HeaderPolicy.equalsIgnoringASCIICase(name, "connection"):
                scan.connectionUpgrade = scan.connectionUpgrade || HeaderPolicy.listContains(value, token: "upgrade")
                scan.hasHopByHop = true
            case 17 where HeaderPolicy.equalsIgnoringASCIICase(name, "transfer-encoding"):
                scan.chunked = scan.chunked || HeaderPolicy.listContains(value, token: "chunked")
                scan.hasHopByHop = true
            default:
                if HeaderPolicy.isHopByHop(name) { scan.hasHopByHop = true }
            }
        }
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
    /// asked) in place, and re-applies chunked framing when the message had it. No Foundation, no
    /// rebuilt header list: it runs on most responses (an HTTP/1.1 server's `Connection: keep-alive`).
    mutating func meshStripHopByHop(_ scan: HeaderScan, removeExpect: Bool) {
        guard scan.hasHopByHop || removeExpect else { return }
        var names: [Substring] = []
        func note(_ name: Substring) {
            if !names.contains(where: { HeaderPolicy.equalsFoldingASCIICase($0, name) }) { names.append(name) }
        }
        for (name, value) in self {
            if HeaderPolicy.isHopByHop(name) {
                note(name[...])
                if name.utf8.count == 10 && HeaderPolicy.equalsIgnoringASCIICase(name, "connection") {
                    HeaderPolicy.forEachListItem(value) { note($0) }
                }
            } else if removeExpect && name.utf8.count == 6 && HeaderPolicy.equalsIgnoringASCIICase(name, "expect") {
                note(name[...])
            }
        }
        for name in names { remove(name: String(name)) }
        if scan.chunked { add(name: "transfer-encoding", value: "chunked") }
        if scan.teTrailers { add(name: "te", value: "trailers") }
    }
}
