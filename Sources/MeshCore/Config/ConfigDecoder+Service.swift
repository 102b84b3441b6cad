import Yams

extension Decoder {
    mutating func decodeService(_ node: Node, _ path: String) -> ServiceConfig? {
        var service = ServiceConfig(name: "")
        guard let present = decode(node, path, ConfigKeys.service, into: &service) else { return nil }
        if !present.contains("name") { fail(path, node, .missingKey("name")) }
        return service
    }

    /// `round_robin`, or `{algorithm: ..., options}`.
    mutating func decodeBalancer(_ node: Node, _ path: String, into b: inout BalancerConfig) {
        if case .scalar = node {
            if let text = string(node, path) { b.algorithm = balancerKind(text, node, path) ?? b.algorithm }
            return
        }
        guard let present = decode(node, path, ConfigKeys.balancer, into: &b) else { return }
        if !present.contains("algorithm") { fail(path, node, .missingKey("algorithm")) }
    }

    mutating func balancerKind(_ text: String, _ node: Node, _ path: String) -> BalancerKind? {
        if let kind = BalancerKind(rawValue: text) { return kind }
        fail(path, node, .invalidValue(text, expected: BalancerKind.allCases.map(\.rawValue).joined(separator: ", ")))
        return nil
    }

    static func isPrime(_ n: Int) -> Bool {
        if n < 2 { return false }
        var d = 2
        while d * d <= n {
            if n % d == 0 { return false }
            d += 1
        }
        return true
    }

    /// What a `discovery:` mapping says, before the checks that involve several keys.
    struct DiscoveryDraft {
        var file: String?
        var dns: String?
        var port: Int?
        var refresh: MeshDuration?
        var allowEmpty = false
    }

    mutating func decodeDiscovery(_ node: Node, _ path: String) -> DiscoveryConfig? {
        var draft = DiscoveryDraft()
        guard decode(node, path, ConfigKeys.discovery, into: &draft) != nil else { return nil }
        if let r = draft.refresh, r < .milliseconds(100) {
            fail(join(path, "refresh"), node, .invalidValue(r.description, expected: "at least 100ms"))
        }
        switch (draft.file, draft.dns) {
        case (let f?, nil):
            if draft.port != nil { fail(join(path, "port"), node, .invalid("'port' applies to dns discovery only")) }
            return DiscoveryConfig(source: .file(path: f), refresh: draft.refresh ?? .seconds(1), allowEmpty: draft.allowEmpty)
        case (nil, let name?):
            guard let port = draft.port else {
                fail(path, node, .missingKey("port"))
                return nil
            }
            return DiscoveryConfig(
                source: .dns(name: name, port: port), refresh: draft.refresh ?? .seconds(5), allowEmpty: draft.allowEmpty)
        case (nil, nil):
            fail(path, node, .missingKey("file or dns"))
        default:
            fail(path, node, .invalid("give either 'file' or 'dns', not both"))
        }
        return nil
    }

    mutating func decodeEndpoint(_ node: Node, _ path: String) -> EndpointConfig? {
        if case .scalar = node {
            guard let address = address(node, path) else { return nil }
            return EndpointConfig(address: address)
        }
        // The address is required: a placeholder until it is read (port 0 never passes HostPort.parse).
        var endpoint = EndpointConfig(address: HostPort(host: "", port: 0))
        guard let present = decode(node, path, ConfigKeys.endpoint, into: &endpoint) else { return nil }
        guard endpoint.address.port != 0 else {
            if !present.contains("address") { fail(path, node, .missingKey("address")) }
            return nil
        }
        return endpoint
    }
}

extension ConfigKeys {
    static let service: [ConfigKey<ServiceConfig>] = [
        .text("name", bound: "letters, digits, `.-_`, ≤ 253") { d, node, path, text, s in
            d.marks[path] = node.mark
            if Decoder.isValidName(text) {
                s.name = text
            } else {
                d.fail(path, node, .invalidValue(text, expected: "a name of letters, digits, '.', '-', '_'"))
            }
        },
        ConfigKey(name: "endpoints", bound: nil) { d, node, path, s in
            guard let items = d.sequence(node) else {
                d.fail(path, node, .wrongType(expected: "a list of endpoints"))
                return
            }
            s.endpoints = items.enumerated().compactMap { d.decodeEndpoint($1, "\(path)[\($0)]") }
        },
        ConfigKey(name: "discovery", bound: nil) { d, node, path, s in s.discovery = d.decodeDiscovery(node, path) },
        ConfigKey(name: "balancer", bound: "`round_robin`, `random`, `least_request`, `ewma`, `ring_hash`, `maglev`") {
            d, node, path, s in d.decodeBalancer(node, path, into: &s.balancer)
        },
        ConfigKey(name: "locality", bound: nil) { d, node, path, s in
            d.marks[path] = node.mark
            var pref = LocalityPreference(prefer: .zone)
            guard let present = d.decode(node, path, serviceLocality, into: &pref) else { return }
            if present.contains("prefer") { s.locality = pref } else { d.fail(path, node, .missingKey("prefer")) }
        },
        .section("timeouts", serviceTimeouts, \.self),
        .section("limits", limits, \.limits),
        ConfigKey(name: "outlierDetection", bound: nil) { d, node, path, s in
            var od = OutlierDetector.Config()
            guard d.decode(node, path, outlierDetection, into: &od) != nil else { return }
            if od.maxEjectionTime < od.baseEjectionTime {
                d.fail(d.join(path, "maxEjectionTime"), node, .invalid("must be at least baseEjectionTime"))
            }
            s.outlierDetection = od
        },
        .text("protocol", bound: "`auto`, `http1`, `http2`, `grpc`, `tcp`") { d, node, path, text, s in
            if let p = ServiceProtocol(rawValue: text) {
                s.protocol = p
            } else {
                d.fail(path, node, .invalidValue(text, expected: "auto, http1, http2, grpc or tcp"))
            }
        },
        ConfigKey(name: "listen", bound: "HOST:PORT") { d, node, path, s in
            d.marks[path] = node.mark
            s.listen = d.address(node, path, allowPortZero: true)
        },
        ConfigKey(name: "tls", bound: nil) { d, node, path, s in
            var tls = ServiceTLSConfig(identity: .any)
            guard let present = d.decode(node, path, serviceTLS, into: &tls) else {
                d.fail(path, node, .wrongType(expected: "a mapping with identity"))
                return
            }
            if present.contains("identity") { s.tls = tls } else { d.fail(path, node, .missingKey("identity")) }
        },
    ]

    static let endpoint: [ConfigKey<EndpointConfig>] = [
        ConfigKey(name: "address", bound: "HOST:PORT") { d, node, path, e in
            if let a = d.address(node, path) { e.address = a }
        },
        .address("via", \.via),
        .int("weight", 1...10_000, \.weight),
        ConfigKey(name: "zone", bound: "strings") { d, node, path, e in e.zone = d.string(node, path) },
        ConfigKey(name: "node", bound: "strings") { d, node, path, e in e.node = d.string(node, path) },
    ]

    static let discovery: [ConfigKey<Decoder.DiscoveryDraft>] = [
        ConfigKey(name: "file", bound: "path") { d, node, path, x in x.file = d.string(node, path) },
        ConfigKey(name: "dns", bound: "host name") { d, node, path, x in x.dns = d.string(node, path) },
        ConfigKey(name: "port", bound: "1…65535") { d, node, path, x in x.port = d.int(node, path, range: 1...65535) },
        .duration("refresh", max: .seconds(3600), \.refresh),
        .bool("allowEmpty", \.allowEmpty),
    ]

    static let balancer: [ConfigKey<BalancerConfig>] = [
        .text("algorithm", bound: "`round_robin`, `random`, `least_request`, `ewma`, `ring_hash`, `maglev`") {
            d, node, path, text, b in if let kind = d.balancerKind(text, node, path) { b.algorithm = kind }
        },
        ConfigKey(name: "hashKey", bound: "`sourceIP`, `{header: NAME}`, `{cookie: NAME}`") { d, node, path, b in
            if case .scalar = node {
                guard let text = d.string(node, path) else { return }
                if text == "sourceIP" {
                    b.hashKey = .sourceIP
                } else {
                    d.fail(path, node, .invalidValue(text, expected: "sourceIP, {header: NAME} or {cookie: NAME}"))
                }
            } else if let e = d.mapping(node, path, allowed: ["header", "cookie", "sourceIP"]), let (hk, hv) = e.first {
                if e.count > 1 { d.fail(path, node, .invalid("give one of header, cookie or sourceIP")) }
                switch hk {
                case "header": if let h = d.string(hv, d.join(path, hk)) { b.hashKey = .header(h.lowercased()) }
                case "cookie": if let c = d.string(hv, d.join(path, hk)) { b.hashKey = .cookie(c) }
                default: b.hashKey = .sourceIP
                }
            }
        },
        .duration("decay", max: .seconds(3600), \.decay),
        .duration("defaultRTT", max: .seconds(60), \.defaultRTT),
        .int("pointsPerWeight", 1...4096, \.pointsPerWeight),
        ConfigKey(name: "tableSize", bound: "a prime, 3…5000011") { d, node, path, b in
            guard let i = d.int(node, path, range: 3...5_000_011) else { return }
            if Decoder.isPrime(i) {
                b.tableSize = i
            } else {
                d.fail(path, node, .invalidValue(String(i), expected: "a prime number (such as 65537)"))
            }
        },
    ]

    static let serviceLocality: [ConfigKey<LocalityPreference>] = [
        .text("prefer", bound: "`zone`, `node`") { d, node, path, text, pref in
            if let scope = LocalityPreference.Scope(rawValue: text) {
                pref.prefer = scope
            } else {
                d.fail(path, node, .invalidValue(text, expected: "node or zone"))
            }
        },
        .number("minHealthyShare", 0...1, bound: "0…1", \.minHealthyShare),
    ]
}
