/// Whether a header block meshd received on HTTP/2 is well-formed (RFC 9113 §8.2, §8.3): meshd checks
/// every block it receives in the same pass that reads it, so NIO's HTTP/2 handler runs with its own
/// block validation off (it checked the blocks meshd sends as well, with one switch for both, and
/// cost more than the rest of a stream's header handling). The blocks meshd sends come from heads
/// NIO's HTTP/1 parser or this check accepted, and from meshd's own headers.
///
/// A malformed block is a stream error: the stream is reset with PROTOCOL_ERROR (RFC 9113 §8.1.1).
/// The rules are NIO's (which follow the RFC), with the same strictness:
/// - a name is a lowercase `token` (RFC 9110 §5.6.2), a pseudo-header's after its `:`;
/// - pseudo-headers come before every regular field, each at most once, and only those the block
///   may carry: `:method`, `:scheme`, `:authority`, `:path` on a request (`:method` and
///   `:authority` alone on a CONNECT), `:status` on a response, none in trailers; a request has
///   `:method`, `:scheme` and a non-empty `:path` (CONNECT: `:method` and `:authority`), a response
///   `:status` of three digits from 100 to 599;
/// - a pseudo-header's value has no control character, space or DEL (it becomes HTTP/1's request
///   line); any other value has no NUL, CR or LF (they would end an HTTP/1 field early);
/// - no connection-specific field (`connection`, `keep-alive`, `proxy-connection`,
///   `transfer-encoding`, `upgrade`), and `te` only as `trailers`.
///
/// Use: `field(name:value:)` for each field in order, then `finish()`.
public struct HTTP2FieldCheck: Sendable {
    public enum Block: Sendable {
        case request
        case response
        case trailers
    }

    /// A pseudo-header (RFC 9113 §8.3).
    public enum Pseudo: UInt8, Sendable {
        case method = 1
        case scheme = 2
        case authority = 4
        case path = 8
        case status = 16
    }

    /// Why a block is malformed.
    public enum Problem: Error, Equatable, Sendable, CustomStringConvertible {
        case invalidName(String)
        case invalidValue(name: String)
        case pseudoAfterRegularField(String)
        case unexpectedPseudoHeader(String)
        case repeatedPseudoHeader(String)
        case connectionSpecificField(String)
        case teNotTrailers
        case missingPseudoHeaders
        case emptyPath
        case invalidStatus

        public var description: String {
            switch self {
            case .invalidName(let n): return "invalid field name '\(n.prefix(64))'"
            case .invalidValue(let n): return "invalid value of field '\(n.prefix(64))'"
            case .pseudoAfterRegularField(let n): return "pseudo-header \(n) after a regular field"
            case .unexpectedPseudoHeader(let n): return "pseudo-header \(n.prefix(64)) not allowed here"
            case .repeatedPseudoHeader(let n): return "pseudo-header \(n) repeated"
            case .connectionSpecificField(let n): return "connection-specific field '\(n)'"
            case .teNotTrailers: return "te other than 'trailers'"
            case .missingPseudoHeaders: return "mandatory pseudo-headers missing"
            case .emptyPath: return "empty :path"
            case .invalidStatus: return ":status not a 3-digit code from 100 to 599"
            }
        }
    }

    public let block: Block
    private var seen: UInt8 = 0
    private var regular = false
    private var connect = false

    public init(_ block: Block) { self.block = block }

    /// Checks the next field; for a pseudo-header, says which.
    public mutating func field(name: String, value: String) throws(Problem) -> Pseudo? {
        if name.utf8.first == UInt8(ascii: ":") { return try pseudo(name: name, value: value) }
        regular = true
        try Self.checkRegular(name: name, value: value)
        return nil
    }

    /// After the last field: the block has the pseudo-headers it must have.
    public func finish() throws(Problem) {
        let mandatory: UInt8
        switch block {
        case .request:
            mandatory =
                connect
                ? Pseudo.method.rawValue | Pseudo.authority.rawValue
                : Pseudo.method.rawValue | Pseudo.scheme.rawValue | Pseudo.path.rawValue
            if connect && seen & (Pseudo.scheme.rawValue | Pseudo.path.rawValue) != 0 {
                throw .unexpectedPseudoHeader(seen & Pseudo.path.rawValue != 0 ? ":path" : ":scheme")
            }
        case .response: mandatory = Pseudo.status.rawValue
        case .trailers: mandatory = 0
        }
        if seen & mandatory != mandatory { throw .missingPseudoHeaders }
    }

    private mutating func pseudo(name: String, value: String) throws(Problem) -> Pseudo {
        if regular { throw .pseudoAfterRegularField(name) }
        let p: Pseudo
        switch (block, name) {
        case (.request, ":method"):
            p = .method
            connect = value == "CONNECT"
        case (.request, ":scheme"): p = .scheme
        case (.request, ":authority"): p = .authority
        case (.request, ":path"):
            p = .path
            if value.isEmpty { throw .emptyPath }
        case (.response, ":status"):
            p = .status
            // RFC 9110 §15: three digits, 1xx to 5xx.
            let u = value.utf8
            guard u.count == 3, let f = u.first, f >= UInt8(ascii: "1") && f <= UInt8(ascii: "5"),
                u.allSatisfy({ $0 &- UInt8(ascii: "0") < 10 })
            else { throw .invalidStatus }
        default: throw .unexpectedPseudoHeader(name)
        }
        if seen & p.rawValue != 0 { throw .repeatedPseudoHeader(name) }
        seen |= p.rawValue
        let clean = value.meshWithUTF8 { bytes in
            for c in bytes where c <= 0x20 || c == 0x7F { return false }
            return true
        }
        if !clean { throw .invalidValue(name: name) }
        return p
    }

    /// A regular field: a lowercase token name, not connection-specific, and a value without NUL, CR
    /// or LF. Both loops run on the strings' contiguous UTF-8 (`meshWithUTF8`), not on
    /// `String.UTF8View`'s iterator: this runs for every field of every block received.
    private static func checkRegular(name: String, value: String) throws(Problem) {
        let n = name.meshWithUTF8 { bytes -> Int in
            for c in bytes {
                // The lowercase `tchar`s as two 64-bit masks: 0x21, 0x23-0x27, 0x2A, 0x2B, 0x2D, 0x2E,
                // 0x30-0x39, 0x5E-0x7A, 0x7C, 0x7E.
                let ok =
                    c < 64
                    ? (0x03FF_6CFA_0000_0000 as UInt64) >> c & 1 != 0
                    : c < 128 && (0x57FF_FFFF_C000_0000 as UInt64) >> (c &- 64) & 1 != 0
                if !ok { return -1 }
            }
            return bytes.count
        }
        switch n {
        case ...0: throw .invalidName(name)
        case 2 where name == "te": if value != "trailers" { throw .teNotTrailers }
        case 7 where name == "upgrade", 10 where name == "connection" || name == "keep-alive",
            16 where name == "proxy-connection", 17 where name == "transfer-encoding":
            throw .connectionSpecificField(name)
        default: break
        }
        let clean = value.meshWithUTF8 { bytes in
            for c in bytes where c == 0 || c == 0x0A || c == 0x0D { return false }
            return true
        }
        if !clean { throw .invalidValue(name: name) }
    }
}
