import Yams

extension Decoder {
    mutating func decodeRoute(_ node: Node, _ path: String) -> RouteConfig? {
        let allowed = ["name", "match", "service", "backends", "timeout", "retry", "rateLimit"]
        guard let entries = mapping(node, path, allowed: allowed) else { return nil }
        var route = RouteConfig()
        var hasService = false
        var hasBackends = false
        for (k, v) in entries {
            let p = join(path, k)
            switch k {
            case "name": route.name = string(v, p)
            case "match": decodeMatch(v, p, into: &route.match)
            case "service":
                marks[p] = v.mark
                if let s = string(v, p) {
                    hasService = true
                    route.backends = [RouteConfig.Backend(service: s, weight: 1)]
                }
            case "backends":
                hasBackends = true
                marks[p] = v.mark
                guard let items = sequence(v) else {
                    fail(p, v, .wrongType(expected: "a list of {service, weight}"))
                    continue
                }
                var backends: [RouteConfig.Backend] = []
                for (i, item) in items.enumerated() {
                    let bp = "\(p)[\(i)]"
                    guard let be = mapping(item, bp, allowed: ["service", "weight"]) else { continue }
                    var service: String?
                    var weight = 1
                    for (bk, bv) in be {
                        if bk == "service" {
                            marks[bp + ".service"] = bv.mark
                            service = string(bv, bp + ".service")
                        }
                        if bk == "weight", let w = int(bv, bp + ".weight", range: 0...10_000) { weight = w }
                    }
                    if let service {
                        backends.append(.init(service: service, weight: weight))
                    } else {
                        fail(bp, item, .missingKey("service"))
                    }
                }
                if backends.isEmpty { fail(p, v, .invalid("a route needs at least one backend")) }
                route.backends = backends
            case "timeout": route.timeout = duration(v, p)
            case "retry": route.retry = decodeRetry(v, p)
            case "rateLimit":
                guard let e = mapping(v, p, allowed: ["requestsPerSecond", "burst", "perSource"]) else { continue }
                var rps: Double?
                var burst: Double?
                var perSource: Bool?
                for (rk, rv) in e {
                    let rp = join(p, rk)
                    switch rk {
                    case "requestsPerSecond", "burst":
                        if let t = string(rv, rp) {
                            if let d = Double(t), d > 0, d <= 10_000_000 {
                                if rk == "burst" { burst = d } else { rps = d }
                            } else {
                                fail(rp, rv, .invalidValue(t, expected: "a number above 0"))
                            }
                        }
                    case "perSource": perSource = bool(rv, rp)
                    default: break
                    }
                }
                if let rps {
                    route.rateLimit = RateLimitConfig(requestsPerSecond: rps, burst: burst ?? max(1, rps), perSource: perSource)
                } else {
                    fail(p, v, .missingKey("requestsPerSecond"))
                }
            default: break
            }
        }
        if hasService && hasBackends {
            fail(path, node, .invalid("give either 'service' or 'backends', not both"))
        } else if !hasService && !hasBackends {
            fail(path, node, .missingKey("service"))
        }
        return route
    }

    mutating func decodeRetry(_ node: Node, _ path: String) -> RetryPolicy? {
        let keys = ["retryOn", "backoff", "budget"] + ConfigKeys.retry.map(\.name)
        guard let entries = mapping(node, path, allowed: keys) else { return nil }
        var r = RetryPolicy()
        for (k, v) in entries {
            let p = join(path, k)
            switch k {
            case "retryOn":
                guard let items = sequence(v) else {
                    fail(p, v, .wrongType(expected: "a list such as [connect-failure, gateway-error]"))
                    continue
                }
                var set = Set<RetryPolicy.Condition>()
                for (i, item) in items.enumerated() {
                    guard let text = string(item, "\(p)[\(i)]") else { continue }
                    if let c = RetryPolicy.Condition.parse(text) {
                        set.insert(c)
                    } else {
                        fail(
                            "\(p)[\(i)]", item,
                            .invalidValue(
                                text,
                                expected:
                                    "connect-failure, refused-stream, reset, 5xx, gateway-error, a status code, or a gRPC status (unavailable, cancelled, deadline-exceeded, internal, resource-exhausted)"
                            ))
                    }
                }
                r.retryOn = set
            case "backoff":
                guard decode(v, p, ConfigKeys.backoff, into: &r.backoff) else { continue }
                if r.backoff.max < r.backoff.base { fail(join(p, "max"), v, .invalid("must be at least backoff.base")) }
            case "budget": decode(v, p, ConfigKeys.budget, into: &r.budget)
            default:
                if let key = ConfigKeys.retry.first(where: { $0.name == k }) { key.decode(&self, v, p, &r) }
            }
        }
        return r
    }

    mutating func decodeMatch(_ node: Node, _ path: String, into match: inout RouteConfig.Match) {
        guard let entries = mapping(node, path, allowed: ["authority", "pathPrefix", "method", "headers"]) else { return }
        for (k, v) in entries {
            let p = join(path, k)
            switch k {
            case "authority": match.authority = string(v, p)?.lowercased()
            case "pathPrefix":
                if let s = string(v, p) {
                    if s.hasPrefix("/") {
                        match.pathPrefix = s
                    } else {
                        fail(p, v, .invalidValue(s, expected: "a path starting with '/'"))
                    }
                }
            case "method": match.method = string(v, p)?.uppercased()
            case "headers":
                guard case .mapping(let m) = v else {
                    fail(p, v, .wrongType(expected: "a mapping of header name to value"))
                    continue
                }
                for (hk, hv) in m {
                    guard case .scalar(let name) = hk, let value = string(hv, p + "." + (hk.string ?? "?")) else { continue }
                    match.headers.append(.init(name: name.string.lowercased(), value: value))
                }
            default: break
            }
        }
    }

    func isValidName(_ name: String) -> Bool {
        !name.isEmpty && name.count <= 253
            && name.allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "-" || $0 == "." || $0 == "_") }
    }
}
