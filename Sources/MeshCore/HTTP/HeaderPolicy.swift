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
    /// Set by an outbound meshd that carries an HTTP/1.1 request over HTTP/2 to another meshd; the
    /// receiving meshd removes it and speaks HTTP/1.1 to the application again (`appProtocol: auto`).
    public static let originalProtocolHeader = "x-meshd-orig-proto"
    /// The caller's identity as meshd proved it with mTLS (Envoy's format: `By=<local SPIFFE ID>;
    /// Hash=<SHA-256 of the caller's certificate>;URI=<caller SPIFFE ID>`). meshd removes any a client
    /// sent (Envoy's default `SANITIZE`) and sets it on inbound requests that came over mTLS.
    public static let clientCertHeader = "x-forwarded-client-cert"

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

extension HeaderPolicy {
    /// Whether `name` is one of the fixed hop-by-hop headers, compared ASCII-case-insensitively
    /// without allocating.
    public static func isHopByHop(_ name: String) -> Bool {
        switch name.utf8.count {
        case 2: return equalsIgnoringASCIICase(name, literal: "te")
        case 7: return equalsIgnoringASCIICase(name, literal: "upgrade") || equalsIgnoringASCIICase(name, literal: "trailer")
        case 10: return equalsIgnoringASCIICase(name, literal: "connection") || equalsIgnoringASCIICase(name, literal: "keep-alive")
        case 16: return equalsIgnoringASCIICase(name, literal: "proxy-connection")
        case 17: return equalsIgnoringASCIICase(name, literal: "transfer-encoding")
        case 18: return equalsIgnoringASCIICase(name, literal: "proxy-authenticate")
        case 19: return equalsIgnoringASCIICase(name, literal: "proxy-authorization")
        default: return false
        }
    }

    /// ASCII case-insensitive equality; `lowercase` must already be lowercase. Concrete (not
    /// generic) and inlinable: it runs for every header of every message.
    /// Compares the strings' UTF-8 bytes in place (`meshWithUTF8`), not through `String.UTF8View`'s
    /// iterator — 5 % of the instructions of a proxied HTTP/1.1 request went to that iterator
    /// (callgrind).
    @inlinable
    public static func equalsIgnoringASCIICase(_ s: String, _ lowercase: String) -> Bool {
        guard s.utf8.count == lowercase.utf8.count else { return false }
        return s.meshWithUTF8 { a in lowercase.meshWithUTF8 { b in equalsIgnoringASCIICase(bytes: a, b) } }
    }

    @inlinable
    public static func equalsIgnoringASCIICase(_ s: Substring, _ lowercase: String) -> Bool {
        guard s.utf8.count == lowercase.utf8.count else { return false }
        return s.meshWithUTF8 { a in lowercase.meshWithUTF8 { b in equalsIgnoringASCIICase(bytes: a, b) } }
    }

    /// `s` with its ASCII capitals lowered and every other byte kept (field names are ASCII tokens;
    /// RFC 9113 §8.2.1 wants them lower-case on HTTP/2). One allocation at most, no Unicode case
    /// mapping: `String.lowercased()` cost about 700 instructions per field name.
    public static func asciiLowercased(_ s: String) -> String {
        s.meshWithUTF8 { bytes in
            String(unsafeUninitializedCapacity: bytes.count) { out in
                for i in 0..<bytes.count {
                    let c = bytes[i]
                    out[i] = c &- 65 < 26 ? c | 0x20 : c
                }
                return bytes.count
            }
        }
    }

    /// The same against a literal: its bytes are read where they are, with no second string to open.
    @inlinable
    public static func equalsIgnoringASCIICase(_ s: String, literal lowercase: StaticString) -> Bool {
        let n = lowercase.utf8CodeUnitCount
        guard s.utf8.count == n else { return false }
        let b = UnsafeBufferPointer(start: lowercase.utf8Start, count: n)
        return s.meshWithUTF8 { a in equalsIgnoringASCIICase(bytes: a, b) }
    }

    @inlinable
    public static func equalsIgnoringASCIICase(bytes a: UnsafeBufferPointer<UInt8>, _ b: UnsafeBufferPointer<UInt8>) -> Bool {
        guard a.count == b.count else { return false }
        for i in 0..<a.count {
            let x = a[i]
            if (x &- 65 < 26 ? x | 0x20 : x) != b[i] { return false }
        }
        return true
    }

    /// The comparison itself: inlinable, so it is specialised for the concrete views at each call site.
    @inlinable
    public static func equalsIgnoringASCIICase(_ a: some Collection<UInt8>, _ b: some Collection<UInt8>) -> Bool {
        guard a.count == b.count else { return false }
        var ib = b.makeIterator()
        for x in a {
            guard let y = ib.next(), (x >= 65 && x <= 90 ? x | 0x20 : x) == y else { return false }
        }
        return true
    }

    /// ASCII case-insensitive equality of two names, folding both sides.
    @inlinable
    public static func equalsFoldingASCIICase(_ a: Substring, _ b: Substring) -> Bool {
        guard a.utf8.count == b.utf8.count else { return false }
        for (x, y) in zip(a.utf8, b.utf8) where (x &- 65 < 26 ? x | 0x20 : x) != (y &- 65 < 26 ? y | 0x20 : y) {
            return false
        }
        return true
    }

    /// Each non-empty item of a comma-separated header value, without surrounding SP / HTAB. Scans
    /// the bytes in place; each item is a slice of `value` (no allocation).
    @inlinable
    public static func forEachListItem(_ value: String, _ body: (Substring) -> Void) {
        var items: (count: Int, ranges: [(Int, Int)]) = (0, [])
        var single: (Int, Int) = (0, 0)
        value.meshWithUTF8 { bytes in
            var i = 0
            while i <= bytes.count {
                var start = i
                var end = i
                while end < bytes.count && bytes[end] != UInt8(ascii: ",") { end += 1 }
                i = end + 1
                while start < end && (bytes[start] == 0x20 || bytes[start] == 0x09) { start += 1 }
                while end > start && (bytes[end - 1] == 0x20 || bytes[end - 1] == 0x09) { end -= 1 }
                if end > start {
                    if items.count == 0 { single = (start, end) } else { items.ranges.append((start, end)) }
                    items.count += 1
                }
            }
        }
        guard items.count > 0 else { return }
        let utf8 = value.utf8
        func slice(_ r: (Int, Int)) -> Substring {
            value[utf8.index(utf8.startIndex, offsetBy: r.0)..<utf8.index(utf8.startIndex, offsetBy: r.1)]
        }
        body(slice(single))
        for r in items.ranges { body(slice(r)) }
    }

    /// Whether a comma-separated header value lists `token` (lowercase), e.g. `chunked` in
    /// `Transfer-Encoding: gzip, chunked`.
    public static func listContains(_ value: String, token: String) -> Bool {
        var found = false
        forEachListItem(value) { item in
            if !found && equalsIgnoringASCIICase(item, token) { found = true }
        }
        return found
    }
}
