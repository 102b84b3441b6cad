/// A `host:port` pair as written in configuration: `10.0.0.7:4143`, `[::1]:8080`, `orders.svc:80`.
///
/// Parsing is strict: the port must be 1...65535 (0 is accepted only where `allowPortZero` says so,
/// for listeners that ask the kernel for a port in tests).
public struct HostPort: Hashable, Sendable, CustomStringConvertible {
    public var host: String
    public var port: Int

    public init(host: String, port: Int) {
        self.host = host
        self.port = port
    }

    /// Parses `host:port`, `[v6]:port`. Returns a reason on failure.
    public static func parse(_ text: String, allowPortZero: Bool = false) -> Result<HostPort, ConfigProblem.Reason> {
        let text = text.trimmingASCIIWhitespace()
        guard !text.isEmpty else { return .failure(.invalidAddress(text, "empty address")) }
        let host: Substring
        let portText: Substring
        if text.hasPrefix("[") {
            guard let close = text.firstIndex(of: "]") else {
                return .failure(.invalidAddress(text, "missing ']' after IPv6 address"))
            }
            host = text[text.index(after: text.startIndex)..<close]
            let rest = text[text.index(after: close)...]
            guard rest.hasPrefix(":") else { return .failure(.invalidAddress(text, "missing ':PORT'")) }
            portText = rest.dropFirst()
        } else {
            guard let colon = text.lastIndex(of: ":") else {
                return .failure(.invalidAddress(text, "missing ':PORT'"))
            }
            host = text[..<colon]
            portText = text[text.index(after: colon)...]
            if host.contains(":") {
                return .failure(.invalidAddress(text, "IPv6 addresses must be written as [ADDR]:PORT"))
            }
        }
        guard !host.isEmpty else { return .failure(.invalidAddress(text, "missing host")) }
        guard let port = Int(portText), port >= (allowPortZero ? 0 : 1), port <= 65535 else {
            return .failure(.invalidAddress(text, "port must be \(allowPortZero ? 0 : 1)...65535"))
        }
        if host.contains(where: { $0 == " " || $0 == "/" }) {
            return .failure(.invalidAddress(text, "invalid host"))
        }
        return .success(HostPort(host: String(host), port: port))
    }

    public var description: String {
        host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
    }

    /// True when the host is a literal loopback address (127.0.0.0/8 or ::1) or `localhost`.
    public var isLoopback: Bool {
        if host == "localhost" || host == "::1" { return true }
        if let v4 = IPAddress(host), case .v4(let bits) = v4 { return bits >> 24 == 127 }
        return false
    }
}

/// An IPv4 or IPv6 address as numbers, for CIDR checks. No sockets involved.
public enum IPAddress: Hashable, Sendable, CustomStringConvertible {
    case v4(UInt32)
    case v6(UInt64, UInt64)

    public init?(_ text: some StringProtocol) {
        if let v4 = IPAddress.parseV4(text) {
            self = .v4(v4)
        } else if let (hi, lo) = IPAddress.parseV6(text) {
            // An IPv4-mapped IPv6 address (::ffff:a.b.c.d) is treated as the IPv4 address.
            if hi == 0 && lo >> 32 == 0xffff {
                self = .v4(UInt32(truncatingIfNeeded: lo))
            } else {
                self = .v6(hi, lo)
            }
        } else {
            return nil
        }
    }

    /// `ADDR:PORT` or `[ADDR]:PORT` (an IP literal, a port 1…65535; SP and HTAB around it ignored) as
    /// an address and a port, read from the bytes in place, as `HostPort.parse` and `IPAddress(_:)`
    /// together read it: a node proxy parses one per request (`x-meshd-dst`). Nil when malformed.
    public static func parseEndpoint(_ text: String) -> (IPAddress, Int)? {
        var text = text
        return text.withUTF8 { all -> (IPAddress, Int)? in
            var start = 0
            var end = all.count
            while start < end && (all[start] == 0x20 || all[start] == 0x09) { start += 1 }
            while end > start && (all[end - 1] == 0x20 || all[end - 1] == 0x09) { end -= 1 }
            var colon = end - 1
            while colon >= start && all[colon] != UInt8(ascii: ":") { colon -= 1 }
            guard colon > start, end - colon - 1 >= 1, end - colon - 1 <= 5 else { return nil }
            var port = 0
            for c in all[(colon + 1)..<end] {
                guard c &- 48 < 10 else { return nil }
                port = port * 10 + Int(c &- 48)
            }
            guard port >= 1 && port <= 65535 else { return nil }
            if all[start] == UInt8(ascii: "[") {
                // IPv6 (rare in a pod address): the general parser on the bracketed text.
                guard colon - start > 2, all[colon - 1] == UInt8(ascii: "]") else { return nil }
                let inner = String(decoding: UnsafeBufferPointer(rebasing: all[(start + 1)..<(colon - 1)]), as: UTF8.self)
                return IPAddress(inner).map { ($0, port) }
            }
            return parseV4(bytes: UnsafeBufferPointer(rebasing: all[start..<colon])).map { (.v4($0), port) }
        }
    }

    /// Four decimal octets (one to three digits each, at most 255) separated by dots.
    static func parseV4(bytes: UnsafeBufferPointer<UInt8>) -> UInt32? {
        var value: UInt32 = 0
        var octet: UInt32 = 0
        var digits = 0
        var parts = 0
        for c in bytes {
            if c == UInt8(ascii: ".") {
                guard digits > 0, parts < 3 else { return nil }
                value = value << 8 | octet
                parts += 1
                octet = 0
                digits = 0
            } else {
                guard c &- 48 < 10, digits < 3 else { return nil }
                octet = octet * 10 + UInt32(c &- 48)
                guard octet <= 255 else { return nil }
                digits += 1
            }
        }
        guard digits > 0, parts == 3 else { return nil }
        return value << 8 | octet
    }

    static func parseV4(_ text: some StringProtocol) -> UInt32? {
        var value: UInt32 = 0
        var parts = 0
        for part in text.split(separator: ".", omittingEmptySubsequences: false) {
            guard !part.isEmpty, part.count <= 3, let octet = UInt32(part), octet <= 255 else { return nil }
            value = value << 8 | octet
            parts += 1
        }
        return parts == 4 ? value : nil
    }

    static func parseV6(_ text: some StringProtocol) -> (UInt64, UInt64)? {
        guard text.contains(":") else { return nil }
        var groups: [UInt16] = []
        var tailGroups: [UInt16] = []
        var sawDoubleColon = false
        let halves = text.components(separatedBy: "::")
        guard halves.count <= 2 else { return nil }
        func parseGroups(_ s: String, into out: inout [UInt16], allowV4Tail: Bool) -> Bool {
            if s.isEmpty { return true }
            let pieces = s.split(separator: ":", omittingEmptySubsequences: false)
            for (i, piece) in pieces.enumerated() {
                if allowV4Tail && i == pieces.count - 1 && piece.contains(".") {
                    guard let v4 = parseV4(piece) else { return false }
                    out.append(UInt16(v4 >> 16))
                    out.append(UInt16(v4 & 0xffff))
                    continue
                }
                guard !piece.isEmpty, piece.count <= 4, let g = UInt16(piece, radix: 16) else { return false }
                out.append(g)
            }
            return true
        }
        if halves.count == 2 {
            sawDoubleColon = true
            guard parseGroups(halves[0], into: &groups, allowV4Tail: false),
                parseGroups(halves[1], into: &tailGroups, allowV4Tail: true)
            else { return nil }
        } else {
            guard parseGroups(halves[0], into: &groups, allowV4Tail: true) else { return nil }
        }
        let total = groups.count + tailGroups.count
        if sawDoubleColon {
            guard total < 8 else { return nil }
            groups += Array(repeating: 0, count: 8 - total) + tailGroups
        } else {
            guard total == 8 else { return nil }
        }
        var hi: UInt64 = 0
        var lo: UInt64 = 0
        for i in 0..<4 { hi = hi << 16 | UInt64(groups[i]) }
        for i in 4..<8 { lo = lo << 16 | UInt64(groups[i]) }
        return (hi, lo)
    }

    public var isLoopback: Bool {
        switch self {
        case .v4(let bits): return bits >> 24 == 127
        case .v6(let hi, let lo): return hi == 0 && lo == 1
        }
    }

    public var description: String {
        switch self {
        case .v4(let b):
            return "\(b >> 24).\((b >> 16) & 0xff).\((b >> 8) & 0xff).\(b & 0xff)"
        case .v6(let hi, let lo):
            var groups: [String] = []
            for i in stride(from: 48, through: 0, by: -16) { groups.append(String((hi >> UInt64(i)) & 0xffff, radix: 16)) }
            for i in stride(from: 48, through: 0, by: -16) { groups.append(String((lo >> UInt64(i)) & 0xffff, radix: 16)) }
            return groups.joined(separator: ":")
        }
    }
}

/// An address block such as `10.42.0.0/24` or `fd00::/64`; a bare address means a single host.
public struct CIDR: Hashable, Sendable, CustomStringConvertible {
    public let address: IPAddress
    public let prefixLength: Int

    public init?(_ text: some StringProtocol) {
        let parts = text.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count == 1 || parts.count == 2, let address = IPAddress(parts[0]) else { return nil }
        let maxLength: Int
        switch address {
        case .v4: maxLength = 32
        case .v6: maxLength = 128
        }
        if parts.count == 2 {
            guard let length = Int(parts[1]), length >= 0, length <= maxLength else { return nil }
            self.prefixLength = length
        } else {
            self.prefixLength = maxLength
        }
        self.address = address
    }

    public static let loopbackV4 = CIDR("127.0.0.0/8")!
    public static let loopbackV6 = CIDR("::1/128")!

    public func contains(_ other: IPAddress) -> Bool {
        switch (address, other) {
        case (.v4(let net), .v4(let ip)):
            let mask: UInt32 = ~(UInt32.max >> UInt32(prefixLength))
            return net & mask == ip & mask
        case (.v6(let nh, let nl), .v6(let ih, let il)):
            // Swift's `>>` is a smart shift: shifting by the full width gives 0.
            let hiBits = min(prefixLength, 64)
            let loBits = max(prefixLength - 64, 0)
            let hiMask: UInt64 = ~(UInt64.max >> UInt64(hiBits))
            let loMask: UInt64 = ~(UInt64.max >> UInt64(loBits))
            return nh & hiMask == ih & hiMask && nl & loMask == il & loMask
        default:
            return false
        }
    }

    public var description: String { "\(address)/\(prefixLength)" }
}

extension StringProtocol {
    func trimmingASCIIWhitespace() -> String {
        var s = Substring(self)
        while let f = s.first, f == " " || f == "\t" || f == "\n" || f == "\r" { s = s.dropFirst() }
        while let l = s.last, l == " " || l == "\t" || l == "\n" || l == "\r" { s = s.dropLast() }
        return String(s)
    }
}
