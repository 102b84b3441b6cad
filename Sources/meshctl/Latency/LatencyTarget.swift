import Foundation

/// One thing `meshctl latency` measures: where to connect, and what request to send there.
struct LatencyTarget: Sendable, Equatable {
    /// The name in reports (`direct`, `sidecar`, …).
    var name: String
    /// Where to connect.
    var host: String
    var port: Int
    /// Request target (origin form: path and query).
    var path: String
    /// The `Host` header: `--authority` when given (a proxy routes on it), else the URL's authority.
    var hostHeader: String
    /// What the target was written as (URL, or `via HOST:PORT`), for reports.
    var label: String

    struct ParseError: Error, CustomStringConvertible {
        var description: String
    }

    /// `NAME=http://HOST[:PORT][/PATH]` or `http://…` (then the name is `HOST:PORT`).
    static func parse(target: String, authority: String?) throws -> LatencyTarget {
        var name: String?
        var url = target
        if !target.lowercased().hasPrefix("http://") && !target.lowercased().hasPrefix("https://"),
            let eq = target.firstIndex(of: "=")
        {
            name = String(target[..<eq])
            url = String(target[target.index(after: eq)...])
        }
        guard let c = URLComponents(string: url), let scheme = c.scheme?.lowercased(), let rawHost = c.host, !rawHost.isEmpty
        else {
            throw ParseError(description: "--target '\(target)': expected NAME=http://HOST[:PORT]/PATH")
        }
        guard scheme == "http" else {
            throw ParseError(description: "--target '\(target)': only http:// URLs are supported (no TLS)")
        }
        let host = rawHost.trimmingCharacters(in: ["[", "]"])
        let port = c.port ?? 80
        guard (1...65535).contains(port) else { throw ParseError(description: "--target '\(target)': bad port \(port)") }
        var path = c.percentEncodedPath.isEmpty ? "/" : c.percentEncodedPath
        if let q = c.percentEncodedQuery { path += "?" + q }
        let hostForHeader = host.contains(":") ? "[\(host)]" : host
        let urlAuthority = port == 80 ? hostForHeader : "\(hostForHeader):\(port)"
        let finalName = name ?? "\(hostForHeader):\(port)"
        guard !finalName.isEmpty else { throw ParseError(description: "--target '\(target)': empty name") }
        return LatencyTarget(
            name: finalName, host: host, port: port, path: path, hostHeader: authority ?? urlAuthority, label: url)
    }

    /// `[NAME=]HOST:PORT`: a proxy address; requests carry `Host: <authority>` and `path`.
    static func parse(via: String, authority: String?, path: String) throws -> LatencyTarget {
        var name: String?
        var address = via
        if let eq = via.firstIndex(of: "=") {
            name = String(via[..<eq])
            address = String(via[via.index(after: eq)...])
        }
        guard let authority else { throw ParseError(description: "--via needs --authority (the service name the proxy routes on)") }
        let parts = address.split(separator: ":")
        guard parts.count >= 2, let port = Int(parts.last!), (1...65535).contains(port) else {
            throw ParseError(description: "--via '\(via)': expected [NAME=]HOST:PORT")
        }
        let host = parts.dropLast().joined(separator: ":").trimmingCharacters(in: ["[", "]"])
        guard !host.isEmpty else { throw ParseError(description: "--via '\(via)': empty host") }
        let p = path.hasPrefix("/") ? path : "/" + path
        return LatencyTarget(
            name: name ?? address, host: host, port: port, path: p, hostHeader: authority, label: "via \(address)")
    }
}
