/// The compiled route table: first match wins, in configuration order.
///
/// Matching is the "logical" step of a request's walk (route → backends); `pickBackend` chooses one
/// service of a weighted split. Both are pure: the caller supplies the request's facts and a random
/// number generator.
public struct RouteTable: Sendable {
    public struct Route: Sendable {
        public let index: Int
        /// `name:` from config, or `route-N`.
        public let name: String
        public let authority: AuthorityMatch
        public let pathPrefix: String?
        public let method: String?
        public let headers: [RouteConfig.HeaderMatch]
        /// Indexes into the snapshot's services, with their weights.
        public let backends: [(service: Int, weight: Int)]
        public let totalWeight: Int
        public let timeout: MeshDuration
        public let retry: RetryPolicy
        public let rateLimit: RateLimitConfig?
    }

    public enum AuthorityMatch: Sendable, Equatable {
        case any
        case exact(String)
        /// `*.example.com` → suffix `.example.com`.
        case suffix(String)

        init(_ pattern: String?) {
            guard let pattern, pattern != "*", !pattern.isEmpty else {
                self = .any
                return
            }
            let host = RouteTable.hostWithoutPort(Substring(pattern)).lowercased()
            if host.hasPrefix("*.") {
                self = .suffix(String(host.dropFirst()))
            } else {
                self = .exact(host)
            }
        }

        func matches(_ host: Substring) -> Bool {
            switch self {
            case .any: return true
            case .exact(let name): return HeaderPolicy.equalsIgnoringASCIICase(host, name)
            case .suffix(let suffix):
                guard host.utf8.count > suffix.utf8.count else { return false }
                return HeaderPolicy.equalsIgnoringASCIICase(host.utf8.suffix(suffix.utf8.count), suffix.utf8)
            }
        }

    }

    public let routes: [Route]

    public init(routes config: [RouteConfig], serviceIndex: [String: Int], defaultTimeout: MeshDuration) {
        var routes: [Route] = []
        for (i, r) in config.enumerated() {
            let backends = r.backends.compactMap { b -> (service: Int, weight: Int)? in
                guard let idx = serviceIndex[b.service], b.weight > 0 else { return nil }
                return (idx, b.weight)
            }
            routes.append(
                Route(
                    index: i,
                    name: r.name ?? "route-\(i)",
                    authority: AuthorityMatch(r.match.authority),
                    pathPrefix: r.match.pathPrefix,
                    method: r.match.method,
                    headers: r.match.headers,
                    backends: backends,
                    totalWeight: backends.reduce(0) { $0 + $1.weight },
                    timeout: r.timeout ?? defaultTimeout,
                    retry: r.retry ?? .connectOnly,
                    rateLimit: r.rateLimit
                ))
        }
        self.routes = routes
    }

    /// The host part of an authority: `orders:8080` → `orders`, `[::1]:80` → `::1`.
    public static func hostWithoutPort(_ authority: Substring) -> Substring {
        // On the UTF-8 bytes (the delimiters are ASCII): Character-level searches cost thousands of
        // instructions per request.
        let bytes = authority.utf8
        if bytes.first == UInt8(ascii: "[") {
            if let close = bytes.firstIndex(of: UInt8(ascii: "]")) {
                return authority[bytes.index(after: bytes.startIndex)..<close]
            }
            return authority
        }
        if let colon = bytes.lastIndex(of: UInt8(ascii: ":")), bytes.firstIndex(of: UInt8(ascii: ":")) == colon {
            return authority[..<colon]
        }
        return authority
    }

    /// First route matching the request, or nil. `header(name)` returns a request header's value
    /// (names are passed lowercased).
    public func match(
        host: Substring,
        path: Substring,
        method: String,
        header: (String) -> String?
    ) -> Route? {
        for route in routes {
            guard route.authority.matches(host) else { continue }
            if let prefix = route.pathPrefix, !path.utf8.starts(with: prefix.utf8) { continue }
            if let m = route.method, m != method { continue }
            var headersMatch = true
            for h in route.headers where header(h.name) != h.value {
                headersMatch = false
                break
            }
            if headersMatch { return route }
        }
        return nil
    }

    /// The first route with `service` among its backends (by weight > 0).
    public func firstRoute(toService service: Int) -> Route? {
        routes.first { route in route.backends.contains { $0.service == service } }
    }

    /// Picks one backend service of a route by weight.
    public static func pickBackend(_ route: Route, using rng: inout some RandomNumberGenerator) -> Int? {
        switch route.backends.count {
        case 0: return nil
        case 1: return route.backends[0].service
        default:
            var ticket = Int.random(in: 0..<route.totalWeight, using: &rng)
            for b in route.backends {
                if ticket < b.weight { return b.service }
                ticket -= b.weight
            }
            return route.backends[route.backends.count - 1].service
        }
    }
}
