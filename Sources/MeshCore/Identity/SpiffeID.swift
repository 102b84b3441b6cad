/// A SPIFFE ID (`spiffe://TRUST_DOMAIN/PATH`), validated as the SPIFFE ID specification says: a
/// lowercase trust domain of letters, digits, `.`, `-` and `_`; a path of non-empty segments of
/// letters, digits, `.`, `-` and `_` (no `.` or `..` segment, no trailing `/`); no port, user, query
/// or fragment; at most 2048 bytes. meshd's workloads are `spiffe://TD/ns/NAMESPACE/sa/ACCOUNT`.
public struct SpiffeID: Hashable, Sendable, CustomStringConvertible {
    public let trustDomain: String
    /// `/ns/shop/sa/web` (empty for the trust domain's own ID).
    public let path: String

    public static let scheme = "spiffe://"
    public static let maxLength = 2048

    public init?(_ text: String) {
        guard text.utf8.count <= Self.maxLength, text.hasPrefix(Self.scheme) else { return nil }
        let rest = text.dropFirst(Self.scheme.count)
        let domain: Substring
        let path: Substring
        if let slash = rest.firstIndex(of: "/") {
            domain = rest[..<slash]
            path = rest[slash...]
        } else {
            domain = rest
            path = ""
        }
        guard !domain.isEmpty, domain.utf8.allSatisfy(Self.isTrustDomainByte) else { return nil }
        if !path.isEmpty {
            let segments = path.dropFirst().split(separator: "/", omittingEmptySubsequences: false)
            for segment in segments {
                guard !segment.isEmpty, segment != ".", segment != "..", segment.utf8.allSatisfy(Self.isPathByte) else {
                    return nil
                }
            }
        }
        self.trustDomain = String(domain)
        self.path = String(path)
    }

    public var description: String { Self.scheme + trustDomain + path }

    /// The `ns` and `sa` segments of a `/ns/NAMESPACE/sa/ACCOUNT` path.
    public var namespace: String? { segment(after: "ns") }
    public var serviceAccount: String? { segment(after: "sa") }

    private func segment(after key: String) -> String? {
        let parts = path.split(separator: "/")
        guard let i = parts.firstIndex(where: { $0 == key }), i + 1 < parts.count else { return nil }
        return String(parts[i + 1])
    }

    static func isTrustDomainByte(_ b: UInt8) -> Bool {
        (b >= 0x61 && b <= 0x7a) || (b >= 0x30 && b <= 0x39) || b == 0x2e || b == 0x2d || b == 0x5f
    }

    static func isPathByte(_ b: UInt8) -> Bool {
        isTrustDomainByte(b) || (b >= 0x41 && b <= 0x5a)
    }
}

/// The identities a rule or a service accepts: one SPIFFE ID (`spiffe://cluster.local/ns/shop/sa/web`),
/// every ID under a path (`spiffe://cluster.local/ns/shop/*`), every ID of a trust domain
/// (`spiffe://cluster.local/*`), or any authenticated identity (`*`).
public enum IdentityPattern: Hashable, Sendable, CustomStringConvertible {
    case any
    case exact(SpiffeID)
    /// IDs of `trustDomain` whose path starts with `pathPrefix` followed by `/` (`""`: all of them).
    case prefix(trustDomain: String, pathPrefix: String)

    public init?(_ text: String) {
        if text == "*" {
            self = .any
            return
        }
        if text.hasSuffix("/*") {
            let base = String(text.dropLast(2))
            guard let id = SpiffeID(base) else { return nil }
            self = .prefix(trustDomain: id.trustDomain, pathPrefix: id.path)
            return
        }
        guard let id = SpiffeID(text) else { return nil }
        self = .exact(id)
    }

    public func matches(_ id: SpiffeID) -> Bool {
        switch self {
        case .any: return true
        case .exact(let want): return want == id
        case .prefix(let domain, let prefix):
            guard id.trustDomain == domain else { return false }
            // `prefix` then `/`, on the bytes (it runs per request, for each rule's callers).
            let path = id.path.utf8
            let n = prefix.utf8.count
            guard path.count > n, path.starts(with: prefix.utf8) else { return false }
            return path[path.index(path.startIndex, offsetBy: n)] == UInt8(ascii: "/")
        }
    }

    public var description: String {
        switch self {
        case .any: return "*"
        case .exact(let id): return id.description
        case .prefix(let domain, let prefix): return SpiffeID.scheme + domain + prefix + "/*"
        }
    }
}

/// How a calling meshd names the pod it wants on a node proxy's inbound listener before any request
/// is read: the TLS server name (SNI) `10-42-0-5.pod.meshd` (IPv6: `fd00-0-0-0-0-0-0-5.pod.meshd`,
/// every group written out). SNI cannot carry an IP literal (RFC 6066 §3), so the address is spelled as
/// a DNS label; the node proxy answers with the certificate of the workload that runs that pod.
public enum PodServerName {
    public static let suffix = ".pod.meshd"

    public static func encode(_ ip: IPAddress) -> String {
        switch ip {
        case .v4(let b):
            return "\(b >> 24)-\((b >> 16) & 0xff)-\((b >> 8) & 0xff)-\(b & 0xff)" + suffix
        case .v6(let hi, let lo):
            var groups: [String] = []
            for shift in stride(from: 48, through: 0, by: -16) { groups.append(String((hi >> UInt64(shift)) & 0xffff, radix: 16)) }
            for shift in stride(from: 48, through: 0, by: -16) { groups.append(String((lo >> UInt64(shift)) & 0xffff, radix: 16)) }
            return groups.joined(separator: "-") + suffix
        }
    }

    /// The pod address a server name names, or nil when it is not one of these names.
    public static func decode(_ name: String) -> IPAddress? {
        guard name.hasSuffix(suffix) else { return nil }
        let label = name.dropLast(suffix.count)
        let parts = label.split(separator: "-", omittingEmptySubsequences: false)
        if parts.count == 4 { return IPAddress(parts.joined(separator: ".")) }
        if parts.count == 8 { return IPAddress(parts.joined(separator: ":")) }
        return nil
    }
}
