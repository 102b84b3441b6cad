import Yams

/// Decodes and validates a YAML or JSON configuration. Every problem is collected (not only the
/// first) with its key path and line, so `meshctl check` and meshd print them all.
public enum ConfigLoader {
    /// Per-pod overrides from the environment: `MESHD_MODE`, `MESHD_NODE_IP`, `MESHD_APP_PORT`.
    public struct Overrides: Sendable, Equatable {
        public var mode: String?
        public var nodeIP: String?
        public var appPort: String?
        public var threads: Int?
        public var zone: String?
        public var nodeName: String?
        public init(
            mode: String? = nil, nodeIP: String? = nil, appPort: String? = nil, threads: Int? = nil, zone: String? = nil,
            nodeName: String? = nil
        ) {
            self.mode = mode
            self.nodeIP = nodeIP
            self.appPort = appPort
            self.threads = threads
            self.zone = zone
            self.nodeName = nodeName
        }

        public static func environment(_ env: [String: String]) -> Overrides {
            Overrides(
                mode: env["MESHD_MODE"], nodeIP: env["MESHD_NODE_IP"], appPort: env["MESHD_APP_PORT"], zone: env["MESHD_ZONE"],
                nodeName: env["MESHD_NODE_NAME"])
        }

        /// Later values win: `other`'s set fields replace ours.
        public func merging(_ other: Overrides) -> Overrides {
            Overrides(
                mode: other.mode ?? mode,
                nodeIP: other.nodeIP ?? nodeIP,
                appPort: other.appPort ?? appPort,
                threads: other.threads ?? threads,
                zone: other.zone ?? zone,
                nodeName: other.nodeName ?? nodeName
            )
        }
    }

    /// Parses `text` (YAML or JSON), applies `overrides`, validates. Throws `ConfigError`.
    public static func load(yaml text: String, overrides: Overrides = Overrides()) throws(ConfigError) -> MeshConfig {
        var decoder = Decoder()
        var config = MeshConfig()
        let root = try compose(text)
        if let root {
            decoder.decodeRoot(root, into: &config)
        }
        decoder.apply(overrides, to: &config)
        decoder.validate(&config)
        if !decoder.problems.isEmpty {
            throw ConfigError(problems: decoder.problems)
        }
        return config
    }

    /// Parses an endpoints file (file discovery): a list of endpoints, or `{endpoints: [...]}`; each
    /// entry is `"HOST:PORT"` or `{address, via, weight, zone, node}`.
    public static func loadEndpoints(yaml text: String) throws(ConfigError) -> [EndpointConfig] {
        var decoder = Decoder()
        let root = try compose(text)
        var list: [Node] = []
        switch root {
        case .sequence(let seq)?: list = Array(seq)
        case .mapping?:
            if let entries = decoder.mapping(root!, "", allowed: ["endpoints"]) {
                for (_, v) in entries {
                    if case .sequence(let seq) = v {
                        list = Array(seq)
                    } else {
                        decoder.fail("endpoints", v, .wrongType(expected: "a list of endpoints"))
                    }
                }
            }
        case .scalar(let s)? where s.string.isEmpty: break
        case nil: break
        default: decoder.fail("", root, .wrongType(expected: "a list of endpoints or {endpoints: [...]}"))
        }
        let endpoints = list.enumerated().compactMap { decoder.decodeEndpoint($1, "endpoints[\($0)]") }
        if !decoder.problems.isEmpty { throw ConfigError(problems: decoder.problems) }
        return endpoints
    }

    /// The built-in default with overrides applied and validated.
    public static func builtInDefault(overrides: Overrides = Overrides()) throws(ConfigError) -> MeshConfig {
        try load(yaml: "", overrides: overrides)
    }

    /// The YAML (or JSON) node tree; syntax errors become a problem with its line and column.
    /// The basic resolver tags every scalar as a string: meshd interprets values itself, and Yams'
    /// default resolver would run NSRegularExpression (and load ICU) for every scalar.
    static func compose(_ text: String) throws(ConfigError) -> Node? {
        do {
            return try Yams.compose(yaml: text, .basic)
        } catch let error as YamlError {
            throw ConfigError(problems: [Self.problem(from: error)])
        } catch {
            throw ConfigError(problems: [ConfigProblem(path: "", reason: .syntax("\(error)"))])
        }
    }

    static func problem(from error: YamlError) -> ConfigProblem {
        switch error {
        case .scanner(_, let problem, let mark, _), .parser(_, let problem, let mark, _),
            .composer(_, let problem, let mark, _):
            return ConfigProblem(path: "", line: mark.line, column: mark.column, reason: .syntax(problem))
        case .duplicatedKeysInMapping(let duplicates, let context):
            return ConfigProblem(
                path: "", line: context.mark.line, column: context.mark.column,
                reason: .syntax("duplicated keys: \(duplicates.joined(separator: ", "))"))
        default:
            return ConfigProblem(path: "", reason: .syntax("\(error)"))
        }
    }
}

/// Walks the Yams node tree, keeping the key path and each node's position.
struct Decoder {
    var problems: [ConfigProblem] = []
    /// Positions of values that cross-field validation may point at later (route services, names).
    var marks: [String: Mark] = [:]

    mutating func fail(at path: String, _ reason: ConfigProblem.Reason) {
        let mark = marks[path]
        problems.append(ConfigProblem(path: path, line: mark?.line, column: mark?.column, reason: reason))
    }

    mutating func fail(_ path: String, _ node: Node?, _ reason: ConfigProblem.Reason) {
        problems.append(ConfigProblem(path: path, line: node?.mark?.line, column: node?.mark?.column, reason: reason))
    }

    /// The entries of a mapping node, or nil (with a problem recorded) if it is not one.
    /// Unknown keys are reported against `allowed`.
    mutating func mapping(_ node: Node, _ path: String, allowed: [String]) -> [(String, Node)]? {
        guard case .mapping(let mapping) = node else {
            fail(path, node, .wrongType(expected: "a mapping (key: value)"))
            return nil
        }
        var entries: [(String, Node)] = []
        for (keyNode, value) in mapping {
            guard case .scalar(let key) = keyNode else {
                fail(path, keyNode, .wrongType(expected: "a string key"))
                continue
            }
            let childPath = join(path, key.string)
            if !allowed.contains(key.string) {
                fail(childPath, keyNode, .unknownKey(key.string, allowed: allowed))
                continue
            }
            entries.append((key.string, value))
        }
        return entries
    }

    func join(_ path: String, _ key: String) -> String { path.isEmpty ? key : path + "." + key }

    mutating func string(_ node: Node, _ path: String) -> String? {
        guard case .scalar(let scalar) = node, !(scalar.string.isEmpty && scalar.style == .plain) else {
            fail(path, node, .wrongType(expected: "a string"))
            return nil
        }
        return scalar.string
    }

    mutating func int(_ node: Node, _ path: String, range: ClosedRange<Int>) -> Int? {
        guard case .scalar(let scalar) = node else {
            fail(path, node, .wrongType(expected: "an integer"))
            return nil
        }
        guard let value = Int(scalar.string), range.contains(value) else {
            fail(path, node, .invalidValue(scalar.string, expected: "an integer in \(range.lowerBound)...\(range.upperBound)"))
            return nil
        }
        return value
    }

    mutating func listenerProtocol(_ node: Node, _ path: String) -> ListenerProtocol? {
        guard let text = string(node, path) else { return nil }
        guard let p = ListenerProtocol(rawValue: text) else {
            fail(path, node, .invalidValue(text, expected: "detect, http1, http2, grpc or tcp"))
            return nil
        }
        return p
    }

    mutating func bool(_ node: Node, _ path: String) -> Bool? {
        guard case .scalar(let scalar) = node else {
            fail(path, node, .wrongType(expected: "true or false"))
            return nil
        }
        switch scalar.string.lowercased() {
        case "true", "yes", "on": return true
        case "false", "no", "off": return false
        default:
            fail(path, node, .invalidValue(scalar.string, expected: "true or false"))
            return nil
        }
    }

    mutating func duration(_ node: Node, _ path: String, max: MeshDuration = .seconds(86_400 * 365)) -> MeshDuration? {
        guard let text = string(node, path) else { return nil }
        guard let d = MeshDuration.parse(text), d <= max else {
            fail(path, node, .invalidValue(text, expected: "a duration such as 250ms, 10s or 2m (at most \(max))"))
            return nil
        }
        return d
    }

    mutating func address(_ node: Node, _ path: String, allowPortZero: Bool = false) -> HostPort? {
        guard let text = string(node, path) else { return nil }
        switch HostPort.parse(text, allowPortZero: allowPortZero) {
        case .success(let hp): return hp
        case .failure(let reason):
            fail(path, node, reason)
            return nil
        }
    }

    mutating func cidrs(_ node: Node, _ path: String) -> [CIDR]? {
        guard case .sequence(let seq) = node else {
            fail(path, node, .wrongType(expected: "a list of CIDRs"))
            return nil
        }
        var out: [CIDR] = []
        for (i, item) in seq.enumerated() {
            let p = "\(path)[\(i)]"
            guard let text = string(item, p) else { continue }
            guard let cidr = CIDR(text) else {
                fail(p, item, .invalidValue(text, expected: "an address block such as 10.42.0.0/24"))
                continue
            }
            out.append(cidr)
        }
        return out
    }

    func sequence(_ node: Node) -> [Node]? {
        if case .sequence(let seq) = node { return Array(seq) }
        return nil
    }

    // MARK: - Document

    static let rootKeys = [
        "mode", "nodeIP", "threads", "outbound", "inbound", "admin", "node", "http", "http2", "upstream", "drainTimeout",
        "accessLog", "services", "routes", "locality",
    ]

    mutating func decodeRoot(_ root: Node, into config: inout MeshConfig) {
        if case .scalar(let s) = root, s.string.isEmpty { return }  // an empty document
        guard let entries = mapping(root, "", allowed: Self.rootKeys) else { return }
        for (key, value) in entries {
            switch key {
            case "mode":
                marks["mode"] = value.mark
                if let text = string(value, key) {
                    if let mode = MeshConfig.Mode(rawValue: text) {
                        config.mode = mode
                    } else {
                        fail(key, value, .invalidValue(text, expected: "sidecar or node"))
                    }
                }
            case "nodeIP":
                if let text = string(value, key) {
                    if IPAddress(text) != nil {
                        config.nodeIP = text
                    } else {
                        fail(key, value, .invalidValue(text, expected: "an IP address"))
                    }
                }
            case "threads": if let v = int(value, key, range: 0...256) { config.threads = v }
            case "outbound":
                if let e = mapping(value, key, allowed: ["listen", "protocol"]) {
                    for (k, v) in e {
                        if k == "listen" { config.outbound.listen = address(v, "outbound.listen", allowPortZero: true) }
                        if k == "protocol", let p = listenerProtocol(v, "outbound.protocol") { config.outbound.protocol = p }
                    }
                }
            case "inbound":
                if let e = mapping(value, key, allowed: ["listen", "app", "protocol", "appProtocol"]) {
                    for (k, v) in e {
                        if k == "appProtocol", let text = string(v, "inbound.appProtocol") {
                            if let p = UpstreamProtocol(rawValue: text) {
                                config.inbound.appProtocol = p
                            } else {
                                fail("inbound.appProtocol", v, .invalidValue(text, expected: "auto, http1, http2 or grpc"))
                            }
                        }
                        if k == "listen" { config.inbound.listen = address(v, "inbound.listen", allowPortZero: true) }
                        if k == "protocol", let p = listenerProtocol(v, "inbound.protocol") { config.inbound.protocol = p }
                        if k == "app", let a = address(v, "inbound.app") { config.inbound.app = a }
                    }
                }
            case "admin":
                if let e = mapping(value, key, allowed: ["listen"]) {
                    for (_, v) in e {
                        if let a = address(v, "admin.listen", allowPortZero: true) { config.admin.listen = a }
                    }
                }
            case "node":
                if let e = mapping(value, key, allowed: ["podCIDRs", "allowedSources"]) {
                    for (k, v) in e {
                        if k == "podCIDRs", let c = cidrs(v, "node.podCIDRs") { config.node.podCIDRs = c }
                        if k == "allowedSources", let c = cidrs(v, "node.allowedSources") {
                            config.node.allowedSources = c
                        }
                    }
                }
            case "locality":
                if let e = mapping(value, key, allowed: ["zone", "node"]) {
                    for (k, v) in e {
                        if k == "zone" { config.locality.zone = string(v, "locality.zone") }
                        if k == "node" { config.locality.node = string(v, "locality.node") }
                    }
                }
            case "http": decodeHTTP(value, into: &config.http)
            case "upstream": decodeUpstream(value, into: &config.upstream)
            case "http2": decodeHTTP2(value, into: &config.http2)
            case "drainTimeout": if let d = duration(value, key, max: .seconds(3600)) { config.drainTimeout = d }
            case "accessLog": if let b = bool(value, key) { config.accessLog = b }
            case "services":
                guard let items = sequence(value) else {
                    fail(key, value, .wrongType(expected: "a list of services"))
                    continue
                }
                config.services = items.enumerated().compactMap { decodeService($1, "services[\($0)]") }
            case "routes":
                guard let items = sequence(value) else {
                    fail(key, value, .wrongType(expected: "a list of routes"))
                    continue
                }
                config.routes = items.enumerated().compactMap { decodeRoute($1, "routes[\($0)]") }
            default: break
            }
        }
    }

    mutating func decodeHTTP2(_ node: Node, into h2: inout HTTP2Config) {
        let allowed = ["maxConcurrentStreams", "initialWindowSize", "maxConnectionsPerEndpoint", "maxResetStreams", "maxPrematureResets"]
        guard let entries = mapping(node, "http2", allowed: allowed) else { return }
        for (k, v) in entries {
            let p = "http2." + k
            switch k {
            case "maxConcurrentStreams": if let n = int(v, p, range: 1...10_000) { h2.maxConcurrentStreams = n }
            // RFC 9113 §6.5.2: at least the 65 535 default, at most 2^31 - 1; meshd caps at 16 MiB.
            case "initialWindowSize": if let n = int(v, p, range: 65_535...(16 << 20)) { h2.initialWindowSize = n }
            case "maxConnectionsPerEndpoint": if let n = int(v, p, range: 1...1024) { h2.maxConnectionsPerEndpoint = n }
            case "maxResetStreams": if let n = int(v, p, range: 10...1_000_000) { h2.maxResetStreams = n }
            case "maxPrematureResets": if let n = int(v, p, range: 1...1_000_000) { h2.maxPrematureResets = n }
            default: break
            }
        }
    }

    mutating func decodeHTTP(_ node: Node, into http: inout HTTPConfig) {
        let allowed = ["maxHeaderBytes", "headerReadTimeout", "idleTimeout", "maxConnections", "detectTimeout"]
        guard let entries = mapping(node, "http", allowed: allowed) else { return }
        for (k, v) in entries {
            let p = "http." + k
            switch k {
            case "maxHeaderBytes": if let i = int(v, p, range: 1024...(1 << 20)) { http.maxHeaderBytes = i }
            case "headerReadTimeout": if let d = duration(v, p, max: .seconds(3600)) { http.headerReadTimeout = d }
            case "idleTimeout": if let d = duration(v, p) { http.idleTimeout = d }
            case "maxConnections": if let i = int(v, p, range: 1...1_000_000) { http.maxConnections = i }
            case "detectTimeout": if let d = duration(v, p, max: .seconds(3600)) { http.detectTimeout = d }
            default: break
            }
        }
    }

    mutating func decodeUpstream(_ node: Node, into up: inout UpstreamConfig) {
        let allowed = ["connectTimeout", "requestTimeout", "idleTimeout", "maxIdlePerEndpoint"]
        guard let entries = mapping(node, "upstream", allowed: allowed) else { return }
        for (k, v) in entries {
            let p = "upstream." + k
            switch k {
            case "connectTimeout": if let d = duration(v, p, max: .seconds(300)) { up.connectTimeout = d }
            case "requestTimeout": if let d = duration(v, p) { up.requestTimeout = d }
            case "idleTimeout": if let d = duration(v, p) { up.idleTimeout = d }
            case "maxIdlePerEndpoint": if let i = int(v, p, range: 0...100_000) { up.maxIdlePerEndpoint = i }
            default: break
            }
        }
    }

    mutating func decodeService(_ node: Node, _ path: String) -> ServiceConfig? {
        let allowed = [
            "name", "endpoints", "discovery", "balancer", "locality", "timeouts", "limits", "outlierDetection", "protocol", "listen",
        ]
        guard let entries = mapping(node, path, allowed: allowed) else { return nil }
        var service = ServiceConfig(name: "")
        var sawName = false
        for (k, v) in entries {
            let p = join(path, k)
            switch k {
            case "name":
                marks[p] = v.mark
                if let name = string(v, p) {
                    sawName = true
                    if isValidName(name) {
                        service.name = name
                    } else {
                        fail(p, v, .invalidValue(name, expected: "a name of letters, digits, '.', '-', '_'"))
                    }
                }
            case "endpoints":
                guard let items = sequence(v) else {
                    fail(p, v, .wrongType(expected: "a list of endpoints"))
                    continue
                }
                service.endpoints = items.enumerated().compactMap { decodeEndpoint($1, "\(p)[\($0)]") }
            case "balancer": decodeBalancer(v, p, into: &service.balancer)
            case "discovery": service.discovery = decodeDiscovery(v, p)
            case "protocol":
                if let text = string(v, p) {
                    if let sp = ServiceProtocol(rawValue: text) {
                        service.protocol = sp
                    } else {
                        fail(p, v, .invalidValue(text, expected: "auto, http1, http2, grpc or tcp"))
                    }
                }
            case "listen":
                marks[p] = v.mark
                service.listen = address(v, p, allowPortZero: true)
            case "timeouts":
                guard let e = mapping(v, p, allowed: ["connect", "idle"]) else { continue }
                for (tk, tv) in e {
                    if tk == "connect" { service.connectTimeout = duration(tv, join(p, tk), max: .seconds(300)) }
                    if tk == "idle" { service.idleTimeout = duration(tv, join(p, tk)) }
                }
            case "limits":
                guard let e = mapping(v, p, allowed: ["maxConnections", "maxPending", "maxRequests", "maxRetries"]) else { continue }
                for (lk, lv) in e {
                    let lp = join(p, lk)
                    switch lk {
                    case "maxConnections": if let i = int(lv, lp, range: 1...1_000_000) { service.limits.maxConnections = i }
                    case "maxPending": if let i = int(lv, lp, range: 0...1_000_000) { service.limits.maxPending = i }
                    case "maxRequests": if let i = int(lv, lp, range: 1...1_000_000) { service.limits.maxRequests = i }
                    case "maxRetries": if let i = int(lv, lp, range: 0...1_000_000) { service.limits.maxRetries = i }
                    default: break
                    }
                }
            case "outlierDetection":
                let keys = [
                    "enabled", "consecutive5xx", "consecutiveGatewayFailures", "baseEjectionTime", "maxEjectionTime",
                    "maxEjectionPercent", "interval",
                ]
                guard let e = mapping(v, p, allowed: keys) else { continue }
                var od = OutlierDetector.Config()
                for (ok, ov) in e {
                    let op = join(p, ok)
                    switch ok {
                    case "enabled": od.enabled = bool(ov, op) ?? true
                    case "consecutive5xx": if let i = int(ov, op, range: 0...10_000) { od.consecutive5xx = i }
                    case "consecutiveGatewayFailures": if let i = int(ov, op, range: 0...10_000) { od.consecutiveGatewayFailures = i }
                    case "baseEjectionTime": if let d = duration(ov, op) { od.baseEjectionTime = d }
                    case "maxEjectionTime": if let d = duration(ov, op) { od.maxEjectionTime = d }
                    case "maxEjectionPercent": if let i = int(ov, op, range: 0...100) { od.maxEjectionPercent = i }
                    case "interval": if let d = duration(ov, op, max: .seconds(3600)) { od.interval = d }
                    default: break
                    }
                }
                if od.maxEjectionTime < od.baseEjectionTime {
                    fail(join(p, "maxEjectionTime"), v, .invalid("must be at least baseEjectionTime"))
                }
                service.outlierDetection = od
            case "locality":
                marks[p] = v.mark
                guard let e = mapping(v, p, allowed: ["prefer", "minHealthyShare"]) else { continue }
                var pref = LocalityPreference(prefer: .zone)
                var sawPrefer = false
                for (lk, lv) in e {
                    let lp = join(p, lk)
                    if lk == "prefer", let text = string(lv, lp) {
                        sawPrefer = true
                        if let scope = LocalityPreference.Scope(rawValue: text) {
                            pref.prefer = scope
                        } else {
                            fail(lp, lv, .invalidValue(text, expected: "node or zone"))
                        }
                    }
                    if lk == "minHealthyShare", let text = string(lv, lp) {
                        if let d = Double(text), d >= 0, d <= 1 {
                            pref.minHealthyShare = d
                        } else {
                            fail(lp, lv, .invalidValue(text, expected: "a number in 0...1"))
                        }
                    }
                }
                if sawPrefer { service.locality = pref } else { fail(p, v, .missingKey("prefer")) }
            default: break
            }
        }
        if !sawName { fail(path, node, .missingKey("name")) }
        return service
    }

    mutating func decodeBalancer(_ node: Node, _ path: String, into b: inout BalancerConfig) {
        let expected = BalancerKind.allCases.map(\.rawValue).joined(separator: ", ")
        if case .scalar = node {
            guard let text = string(node, path) else { return }
            if let kind = BalancerKind(rawValue: text) {
                b.algorithm = kind
            } else {
                fail(path, node, .invalidValue(text, expected: expected))
            }
            return
        }
        let allowed = ["algorithm", "hashKey", "decay", "defaultRTT", "pointsPerWeight", "tableSize"]
        guard let entries = mapping(node, path, allowed: allowed) else { return }
        var sawAlgorithm = false
        for (k, v) in entries {
            let p = join(path, k)
            switch k {
            case "algorithm":
                sawAlgorithm = true
                if let text = string(v, p) {
                    if let kind = BalancerKind(rawValue: text) {
                        b.algorithm = kind
                    } else {
                        fail(p, v, .invalidValue(text, expected: expected))
                    }
                }
            case "hashKey":
                if case .scalar = v {
                    if let text = string(v, p) {
                        if text == "sourceIP" {
                            b.hashKey = .sourceIP
                        } else {
                            fail(p, v, .invalidValue(text, expected: "sourceIP, {header: NAME} or {cookie: NAME}"))
                        }
                    }
                } else if let e = mapping(v, p, allowed: ["header", "cookie", "sourceIP"]), let (hk, hv) = e.first {
                    if e.count > 1 { fail(p, v, .invalid("give one of header, cookie or sourceIP")) }
                    switch hk {
                    case "header": if let h = string(hv, join(p, hk)) { b.hashKey = .header(h.lowercased()) }
                    case "cookie": if let c = string(hv, join(p, hk)) { b.hashKey = .cookie(c) }
                    default: b.hashKey = .sourceIP
                    }
                }
            case "decay": if let d = duration(v, p, max: .seconds(3600)) { b.decay = d }
            case "defaultRTT": if let d = duration(v, p, max: .seconds(60)) { b.defaultRTT = d }
            case "pointsPerWeight": if let i = int(v, p, range: 1...4096) { b.pointsPerWeight = i }
            case "tableSize":
                if let i = int(v, p, range: 3...5_000_011) {
                    if Self.isPrime(i) {
                        b.tableSize = i
                    } else {
                        fail(p, v, .invalidValue(String(i), expected: "a prime number (such as 65537)"))
                    }
                }
            default: break
            }
        }
        if !sawAlgorithm { fail(path, node, .missingKey("algorithm")) }
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

    mutating func decodeDiscovery(_ node: Node, _ path: String) -> DiscoveryConfig? {
        guard let entries = mapping(node, path, allowed: ["file", "dns", "port", "refresh", "allowEmpty"]) else { return nil }
        var file: String?
        var dns: String?
        var port: Int?
        var refresh: MeshDuration?
        var allowEmpty = false
        for (k, v) in entries {
            let p = join(path, k)
            switch k {
            case "file": file = string(v, p)
            case "dns": dns = string(v, p)
            case "port": port = int(v, p, range: 1...65535)
            case "refresh": refresh = duration(v, p, max: .seconds(3600))
            case "allowEmpty": allowEmpty = bool(v, p) ?? false
            default: break
            }
        }
        if let r = refresh, r < .milliseconds(100) {
            fail(join(path, "refresh"), node, .invalidValue(r.description, expected: "at least 100ms"))
        }
        switch (file, dns) {
        case (let f?, nil):
            if port != nil { fail(join(path, "port"), node, .invalid("'port' applies to dns discovery only")) }
            return DiscoveryConfig(source: .file(path: f), refresh: refresh ?? .seconds(1), allowEmpty: allowEmpty)
        case (nil, let name?):
            guard let port else {
                fail(path, node, .missingKey("port"))
                return nil
            }
            return DiscoveryConfig(source: .dns(name: name, port: port), refresh: refresh ?? .seconds(5), allowEmpty: allowEmpty)
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
        guard let entries = mapping(node, path, allowed: ["address", "via", "weight", "zone", "node"]) else { return nil }
        var address: HostPort?
        var via: HostPort?
        var weight = 1
        var zone: String?
        var nodeName: String?
        for (k, v) in entries {
            let p = join(path, k)
            switch k {
            case "address": address = self.address(v, p)
            case "via": via = self.address(v, p)
            case "weight": if let w = int(v, p, range: 1...10_000) { weight = w }
            case "zone": zone = string(v, p)
            case "node": nodeName = string(v, p)
            default: break
            }
        }
        guard let address else {
            if !entries.contains(where: { $0.0 == "address" }) { fail(path, node, .missingKey("address")) }
            return nil
        }
        return EndpointConfig(address: address, via: via, weight: weight, zone: zone, node: nodeName)
    }

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
        let keys = [
            "retryOn", "attempts", "perTryTimeout", "backoff", "budget", "hedgeAfter", "retryNonIdempotent", "bufferBytes",
        ]
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
            case "attempts": if let i = int(v, p, range: 1...10) { r.attempts = i }
            case "perTryTimeout": r.perTryTimeout = duration(v, p)
            case "hedgeAfter": r.hedgeAfter = duration(v, p)
            case "retryNonIdempotent": r.retryNonIdempotent = bool(v, p) ?? false
            case "bufferBytes": if let i = int(v, p, range: 0...(16 << 20)) { r.bufferBytes = i }
            case "backoff":
                guard let e = mapping(v, p, allowed: ["base", "max"]) else { continue }
                for (bk, bv) in e {
                    if bk == "base", let d = duration(bv, join(p, bk), max: .seconds(60)) { r.backoff.base = d }
                    if bk == "max", let d = duration(bv, join(p, bk), max: .seconds(600)) { r.backoff.max = d }
                }
                if r.backoff.max < r.backoff.base { fail(join(p, "max"), v, .invalid("must be at least backoff.base")) }
            case "budget":
                guard let e = mapping(v, p, allowed: ["ratio", "minPerSecond", "window"]) else { continue }
                for (bk, bv) in e {
                    let bp = join(p, bk)
                    switch bk {
                    case "ratio", "minPerSecond":
                        if let t = string(bv, bp) {
                            if let d = Double(t), d >= 0, d <= (bk == "ratio" ? 100 : 1_000_000) {
                                if bk == "ratio" { r.budget.ratio = d } else { r.budget.minPerSecond = d }
                            } else {
                                fail(bp, bv, .invalidValue(t, expected: "a number at least 0"))
                            }
                        }
                    case "window":
                        if let d = duration(bv, bp, max: .seconds(3600)), d >= .seconds(1) {
                            r.budget.window = d
                        } else {
                            fail(bp, bv, .invalid("window must be 1s...1h"))
                        }
                    default: break
                    }
                }
            default: break
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

    // MARK: - Overrides and cross-field validation

    mutating func apply(_ o: ConfigLoader.Overrides, to config: inout MeshConfig) {
        if let mode = o.mode {
            if let m = MeshConfig.Mode(rawValue: mode) {
                config.mode = m
            } else {
                fail("mode", nil, .invalidValue(mode, expected: "sidecar or node (from MESHD_MODE or --mode)"))
            }
        }
        if let ip = o.nodeIP {
            if IPAddress(ip) != nil {
                config.nodeIP = ip
            } else {
                fail("nodeIP", nil, .invalidValue(ip, expected: "an IP address (from MESHD_NODE_IP or --node-ip)"))
            }
        }
        if let port = o.appPort {
            if let p = Int(port), (1...65535).contains(p) {
                config.inbound.app.port = p
            } else {
                fail("inbound.app", nil, .invalidValue(port, expected: "a port 1...65535 (from MESHD_APP_PORT)"))
            }
        }
        if let z = o.zone { config.locality.zone = z }
        if let n = o.nodeName { config.locality.node = n }
        if let t = o.threads {
            if (0...256).contains(t) {
                config.threads = t
            } else {
                fail("threads", nil, .invalidValue("\(t)", expected: "0...256 (from --threads)"))
            }
        }
    }

    mutating func validate(_ config: inout MeshConfig) {
        if config.mode == .node && config.nodeIP == nil && config.outbound.listen == nil {
            // Pointed at the `mode: node` line that makes the key required.
            let mark = marks["mode"]
            problems.append(
                ConfigProblem(
                    path: "nodeIP", line: mark?.line, column: mark?.column,
                    reason: .missingKey("nodeIP (node mode binds the node's host IP; set nodeIP, MESHD_NODE_IP or --node-ip)")))
        }
        for (i, service) in config.services.enumerated() {
            if let pref = service.locality {
                let known = pref.prefer == .zone ? config.locality.zone : config.locality.node
                if known == nil {
                    let key = pref.prefer == .zone ? "locality.zone (or MESHD_ZONE)" : "locality.node (or MESHD_NODE_NAME)"
                    fail(at: "services[\(i)].locality", .invalid("prefer: \(pref.prefer.rawValue) needs this meshd's \(key)"))
                }
            }
        }
        for (i, service) in config.services.enumerated() {
            if service.protocol == .tcp && service.listen == nil {
                fail(at: "services[\(i)]", .missingKey("listen (a tcp service is reached through its own listener)"))
            }
            if service.protocol != .tcp && service.listen != nil {
                fail(at: "services[\(i)].listen", .invalid("'listen' applies to protocol: tcp services only"))
            }
        }
        var seen: [String: Int] = [:]
        for (i, service) in config.services.enumerated() where !service.name.isEmpty {
            if let first = seen[service.name] {
                fail(at: "services[\(i)].name", .invalid("duplicate service '\(service.name)' (first at services[\(first)])"))
            } else {
                seen[service.name] = i
            }
        }
        for (i, route) in config.routes.enumerated() {
            for (j, backend) in route.backends.enumerated() where seen[backend.service] == nil {
                let p = route.backends.count == 1 && j == 0 ? "routes[\(i)].service" : "routes[\(i)].backends[\(j)].service"
                fail(at: p, .invalid("unknown service '\(backend.service)'"))
            }
            if !route.backends.isEmpty && route.backends.allSatisfy({ $0.weight == 0 }) {
                fail(at: "routes[\(i)].backends", .invalid("at least one backend needs a weight above 0"))
            }
        }
    }
}

extension Node {
    fileprivate var string: String? {
        if case .scalar(let s) = self { return s.string }
        return nil
    }
}
