import Yams

extension Decoder {
    mutating func decodeRoute(_ node: Node, _ path: String) -> RouteConfig? {
        var route = RouteConfig()
        guard let present = decode(node, path, ConfigKeys.route, into: &route) else { return nil }
        let hasService = present.contains("service")
        let hasBackends = present.contains("backends")
        if hasService && hasBackends {
            fail(path, node, .invalid("give either 'service' or 'backends', not both"))
        } else if !hasService && !hasBackends {
            fail(path, node, .missingKey("service"))
        }
        return route
    }

    mutating func decodeRetry(_ node: Node, _ path: String) -> RetryPolicy? {
        var r = RetryPolicy()
        guard decode(node, path, ConfigKeys.retry, into: &r) != nil else { return nil }
        return r
    }

    static func isValidName(_ name: String) -> Bool {
        !name.isEmpty && name.count <= 253
            && name.allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "-" || $0 == "." || $0 == "_") }
    }
}

/// What a `rateLimit:` mapping says, before the checks that involve several keys.
struct RateLimitDraft {
    var requestsPerSecond: Double = 0
    var burst: Double = 0
    var perSource: Bool?
}

extension ConfigKeys {
    static let route: [ConfigKey<RouteConfig>] = [
        ConfigKey(name: "name", bound: "string") { d, node, path, r in r.name = d.string(node, path) },
        .section("match", match, \.match),
        ConfigKey(name: "service", bound: "service name") { d, node, path, r in
            d.marks[path] = node.mark
            if let s = d.string(node, path) { r.backends = [RouteConfig.Backend(service: s, weight: 1)] }
        },
        ConfigKey(name: "backends", bound: nil) { d, node, path, r in
            d.marks[path] = node.mark
            guard let items = d.sequence(node) else {
                d.fail(path, node, .wrongType(expected: "a list of {service, weight}"))
                return
            }
            var backends: [RouteConfig.Backend] = []
            for (i, item) in items.enumerated() {
                let bp = "\(path)[\(i)]"
                var b = RouteConfig.Backend(service: "", weight: 1)
                guard let present = d.decode(item, bp, backend, into: &b) else { continue }
                if present.contains("service") {
                    if !b.service.isEmpty { backends.append(b) }
                } else {
                    d.fail(bp, item, .missingKey("service"))
                }
            }
            if backends.isEmpty { d.fail(path, node, .invalid("a route needs at least one backend")) }
            r.backends = backends
        },
        .duration("timeout", \.timeout),
        ConfigKey(name: "retry", bound: nil) { d, node, path, r in r.retry = d.decodeRetry(node, path) },
        ConfigKey(name: "rateLimit", bound: nil) { d, node, path, r in
            var draft = RateLimitDraft()
            guard let present = d.decode(node, path, rateLimit, into: &draft) else { return }
            guard present.contains("requestsPerSecond") else {
                d.fail(path, node, .missingKey("requestsPerSecond"))
                return
            }
            guard draft.requestsPerSecond > 0 else { return }  // its own problem is reported
            let burst = present.contains("burst") ? draft.burst : max(1, draft.requestsPerSecond)
            r.rateLimit = RateLimitConfig(requestsPerSecond: draft.requestsPerSecond, burst: burst, perSource: draft.perSource)
        },
    ]

    static let match: [ConfigKey<RouteConfig.Match>] = [
        ConfigKey(name: "authority", bound: "host, `*`, `*.suffix`") { d, node, path, m in
            m.authority = d.string(node, path)?.lowercased()
        },
        .text("pathPrefix", bound: "starts with `/`") { d, node, path, text, m in
            if text.hasPrefix("/") {
                m.pathPrefix = text
            } else {
                d.fail(path, node, .invalidValue(text, expected: "a path starting with '/'"))
            }
        },
        ConfigKey(name: "method", bound: "e.g. `GET`") { d, node, path, m in m.method = d.string(node, path)?.uppercased() },
        ConfigKey(name: "headers", bound: "map name → exact value") { d, node, path, m in
            guard case .mapping(let map) = node else {
                d.fail(path, node, .wrongType(expected: "a mapping of header name to value"))
                return
            }
            for (hk, hv) in map {
                guard case .scalar(let name) = hk, let value = d.string(hv, path + "." + (hk.string ?? "?")) else { continue }
                m.headers.append(.init(name: name.string.lowercased(), value: value))
            }
        },
    ]

    static let backend: [ConfigKey<RouteConfig.Backend>] = [
        ConfigKey(name: "service", bound: "service name") { d, node, path, b in
            d.marks[path] = node.mark
            if let s = d.string(node, path) { b.service = s }
        },
        .int("weight", 0...10_000, \.weight),
    ]

    static let rateLimit: [ConfigKey<RateLimitDraft>] = [
        .positive("requestsPerSecond", \.requestsPerSecond),
        .positive("burst", \.burst),
        ConfigKey(name: "perSource", bound: "bool") { d, node, path, x in x.perSource = d.bool(node, path) },
    ]
}

extension ConfigKey {
    /// A number above 0 (at most 10 000 000).
    static func positive(_ name: String, _ field: WritableKeyPath<Target, Double> & Sendable) -> ConfigKey {
        ConfigKey(name: name, bound: "> 0") { d, node, path, target in
            guard let text = d.string(node, path) else { return }
            if let v = Double(text), v > 0, v <= 10_000_000 {
                target[keyPath: field] = v
            } else {
                d.fail(path, node, .invalidValue(text, expected: "a number above 0"))
            }
        }
    }
}
