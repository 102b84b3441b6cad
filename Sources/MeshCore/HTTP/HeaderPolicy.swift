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
        case 2: return equalsIgnoringASCIICase(name, "te")
        case 7: return equalsIgnoringASCIICase(name, "upgrade") || equalsIgnoringASCIICase(name, "trailer")
        case 10: return equalsIgnoringASCIICase(name, "connection") || equalsIgnoringASCIICase(name, "keep-alive")
        case 16: return equalsIgnoringASCIICase(name, "proxy-connection")
        case 17: return equalsIgnoringASCIICase(name, "transfer-encoding")
        case 18: return equalsIgnoringASCIICase(name, "proxy-authenticate")
        case 19: return equalsIgnoringASCIICase(name, "proxy-authorization")
        default: return false
        }
    }

    /// ASCII case-insensitive equality; `lowercase` must already be lowercase. Concrete (not
    /// generic) and inlinable: it runs for every header of every message.
    /// Compares the strings' UTF-8 bytes in place (`withUTF8`: no copy for native strings, a stack
    /// copy for small ones), not through `String.UTF8View`'s iterator — 5 % of the instructions of a
    /// proxied HTTP/1.1 request went to that iterator (callgrind).
    @inlinable
    public static func equalsIgnoringASCIICase(_ s: String, _ lowercase: String) -> Bool {
        guard s.utf8.count == lowercase.utf8.count else { return false }
        var s = s
        var lowercase = lowercase
        return s.withUTF8 { a in lowercase.withUTF8 { b in equalsIgnoringASCIICase(bytes: a, b) } }
    }

    @inlinable
    public static func equalsIgnoringASCIICase(_ s: Substring, _ lowercase: String) -> Bool {
        guard s.utf8.count == lowercase.utf8.count else { return false }
        var s = s
        var lowercase = lowercase
        return s.withUTF8 { a in lowercase.withUTF8 { b in equalsIgnoringASCIICase(bytes: a, b) } }
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

    /// Each non-empty item of a comma-separated header value, without surrounding SP / HTAB.
    @inlinable
    public static func forEachListItem(_ value: String, _ body: (Substring) -> Void) {
        var rest = value[...]
        while !rest.isEmpty {
            let comma = rest.utf8.firstIndex(of: UInt8(ascii: ",")) ?? rest.endIndex
            var item = rest[..<comma]
            while let f = item.utf8.first, f == 0x20 || f == 0x09 { item = item[item.utf8.index(after: item.startIndex)...] }
            while let l = item.utf8.last, l == 0x20 || l == 0x09 { item = item[..<item.utf8.index(before: item.endIndex)] }
            if !item.isEmpty { body(item) }
            rest = comma == rest.endIndex ? rest[rest.endIndex...] : rest[rest.utf8.index(after: comma)...]
        }
    }

    /// Whether a comma-separated header value lists `token` (lowercase), e.g. `chunked` in
    /// `Transfer-Encoding: gzip, chunked`.
    public static func listContains(_ value: String, token: String) -> Bool {
        for item in value.utf8.split(separator: UInt8(ascii: ",")) {
            var slice = item[...]
            while let f = slice.first, f == 32 || f == 9 { slice = slice.dropFirst() }
            while let l = slice.last, l == 32 || l == 9 { slice = slice.dropLast() }
            if slice.count == token.utf8.count
                && zip(slice, token.utf8).allSatisfy({ ($0 >= 65 && $0 <= 90 ? $0 | 0x20 : $0) == $1 })
            {
                return true
            }
        }
        return false
    }
}
