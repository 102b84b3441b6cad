/// What the first bytes of a connection say it speaks (meshd reads at most `maxBytes` of them,
/// within the detect timeout, before deciding).
public enum DetectedProtocol: String, Sendable, Equatable, CaseIterable {
    case http1
    /// A request line without a version (`GET /`): HTTP/0.9, which meshd answers with 400 at once.
    case http09
    case http2
    case tls
    case opaque
}

public enum ProtocolDetection {
    /// The HTTP/2 connection preface (RFC 9113 §3.4).
    public static let http2Preface = Array("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".utf8)
    /// Bytes read at most before deciding.
    public static let maxBytes = 1024

    static let methods: [[UInt8]] = [
        "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
    ].map { Array($0.utf8) }

    /// The protocol, or nil when more bytes are needed to tell.
    public static func classify(_ bytes: some Collection<UInt8>) -> DetectedProtocol? {
        let b = Array(bytes.prefix(maxBytes))
        if b.isEmpty { return nil }
        // HTTP/2 prior knowledge: the whole preface, or a prefix of it so far.
        let n = min(b.count, http2Preface.count)
        if b[0..<n].elementsEqual(http2Preface[0..<n]) {
            return b.count >= http2Preface.count ? .http2 : nil
        }
        // TLS: a handshake record (0x16) with a 3.x version.
        if b[0] == 0x16 {
            if b.count < 3 { return nil }
            return b[1] == 0x03 ? .tls : .opaque
        }
        // HTTP/1: METHOD SP request-target SP HTTP/1.x CRLF.
        if let method = methods.first(where: { m in b.count >= m.count ? b.starts(with: m) : m.starts(with: b) }) {
            if b.count <= method.count { return nil }
            guard b[method.count] == UInt8(ascii: " ") else { return .opaque }
            guard let lf = b.firstIndex(of: UInt8(ascii: "\n")) else {
                return b.count >= maxBytes ? .opaque : nil
            }
            var line = b[0..<lf]
            if line.last == UInt8(ascii: "\r") { line = line.dropLast() }
            let versions = [Array(" HTTP/1.1".utf8), Array(" HTTP/1.0".utf8)]
            if versions.contains(where: { line.suffix($0.count).elementsEqual($0) }) { return .http1 }
            // METHOD SP target, nothing after: HTTP/0.9.
            let target = line.dropFirst(method.count + 1)
            if !target.isEmpty && !target.contains(UInt8(ascii: " ")) { return .http09 }
            return .opaque
        }
        // Could still become a method name?
        if methods.contains(where: { $0.starts(with: b) }) { return nil }
        return .opaque
    }
}
