import Yams

// The key tables of the document's sections whose keys need more than a plain value: the top level,
// the listeners, services and routes. A key whose value is a section of its own has its children's
// rows in docs/configuration.md (`bound: nil`).
extension ConfigKeys {
    static let root: [ConfigKey<MeshConfig>] = [
        .text("mode", bound: "`sidecar`, `node`") { d, node, path, text, c in
            d.marks[path] = node.mark
            if let mode = MeshConfig.Mode(rawValue: text) {
                c.mode = mode
            } else {
                d.fail(path, node, .invalidValue(text, expected: "sidecar or node"))
            }
        },
        .text("nodeIP", bound: "an IP") { d, node, path, text, c in
            if IPAddress(text) != nil {
                c.nodeIP = text
            } else {
                d.fail(path, node, .invalidValue(text, expected: "an IP address"))
            }
        },
        .int("threads", 0...256, \.threads),
        .section("outbound", outbound, \.outbound),
        .section("inbound", inbound, \.inbound),
        .section("admin", admin, \.admin),
        .section("upgrade", upgrade, \.upgrade),
        .section("node", node, \.node),
        .section("locality", locality, \.locality),
        .section("http", http, \.http),
        .section("http2", http2, \.http2),
        .section("upstream", upstream, \.upstream),
        .duration("drainTimeout", max: .seconds(3600), \.drainTimeout),
        ConfigKey(name: "accessLog", bound: "`true`, `false`, or a section") { d, node, path, c in
            // `accessLog: true` (standard output, every request), or `{enabled, path, sampleRatio}`.
            if case .mapping = node {
                var section = AccessLogSection(enabled: true, options: AccessLogConfig())
                _ = d.decode(node, path, ConfigKeys.accessLog, into: &section)
                c.accessLog = section.enabled
                c.accessLogOptions = section.options
            } else if let v = d.bool(node, path) {
                c.accessLog = v
            }
        },
        ConfigKey(name: "identity", bound: nil) { d, node, path, c in c.identity = d.decodeIdentity(node, path) },
        .section("authorization", authorization, \.authorization),
        ConfigKey(name: "services", bound: nil) { d, node, path, c in
            guard let items = d.sequence(node) else {
                d.fail(path, node, .wrongType(expected: "a list of services"))
                return
            }
            c.services = items.enumerated().compactMap { d.decodeService($1, "\(path)[\($0)]") }
        },
        ConfigKey(name: "routes", bound: nil) { d, node, path, c in
            guard let items = d.sequence(node) else {
                d.fail(path, node, .wrongType(expected: "a list of routes"))
                return
            }
            c.routes = items.enumerated().compactMap { d.decodeRoute($1, "\(path)[\($0)]") }
        },
    ]

    static let accessLog: [ConfigKey<AccessLogSection>] = [
        .bool("enabled", \.enabled),
        .optionalFile("path", \.options.path),
        .number("sampleRatio", 0...1, bound: "0…1", \.options.sampleRatio),
    ]

    static let outbound: [ConfigKey<OutboundConfig>] = [
        .address("listen", allowPortZero: true, \.listen),
        .listenerProtocol("protocol", \.protocol),
    ]

    static let inbound: [ConfigKey<InboundConfig>] = [
        .address("listen", allowPortZero: true, \.listen),
        ConfigKey(name: "app", bound: "HOST:PORT") { d, node, path, c in
            if let a = d.address(node, path) { c.app = a }
        },
        .listenerProtocol("protocol", \.protocol),
        .text("appProtocol", bound: "`auto`, `http1`, `http2`, `grpc`") { d, node, path, text, c in
            if let p = UpstreamProtocol(rawValue: text) {
                c.appProtocol = p
            } else {
                d.fail(path, node, .invalidValue(text, expected: "auto, http1, http2 or grpc"))
            }
        },
        .text("tls", bound: "`strict`, `permissive`, `disabled`") { d, node, path, text, c in
            if let m = InboundTLSMode(rawValue: text) {
                c.tls = m
            } else {
                d.fail(path, node, .invalidValue(text, expected: "strict, permissive or disabled"))
            }
        },
    ]

    static let upgrade: [ConfigKey<UpgradeConfig>] = [
        .optionalFile("socket", \.socket),
        .text("afterHandover", bound: "`exit`, `wait`") { d, node, path, text, c in
            if let v = UpgradeConfig.AfterHandover(rawValue: text) {
                c.afterHandover = v
            } else {
                d.fail(path, node, .invalidValue(text, expected: "exit or wait"))
            }
        },
    ]

    static let admin: [ConfigKey<AdminConfig>] = [
        ConfigKey(name: "listen", bound: "HOST:PORT") { d, node, path, c in
            if let a = d.address(node, path, allowPortZero: true) { c.listen = a }
        }
    ]

    static let node: [ConfigKey<NodeConfig>] = [
        .cidrs("podCIDRs", \.podCIDRs),
        .cidrs("allowedSources", \.allowedSources),
        .int("sourceMetrics", 0...100, \.sourceMetrics),
    ]

    static let locality: [ConfigKey<SelfLocality>] = [
        ConfigKey(name: "zone", bound: "strings") { d, node, path, c in c.zone = d.string(node, path) },
        ConfigKey(name: "node", bound: "strings") { d, node, path, c in c.node = d.string(node, path) },
    ]

    /// Every key of the document with its full path (`[]` for list items) and documented bound.
    static var documented: [(path: String, bound: String)] {
        var out: [(path: String, bound: String)] = []
        func add<T>(_ prefix: String, _ keys: [ConfigKey<T>]) {
            for key in keys { if let bound = key.bound { out.append((prefix + key.name, bound)) } }
        }
        add("", root)
        add("accessLog.", accessLog)
        add("outbound.", outbound)
        add("inbound.", inbound)
        add("admin.", admin)
        add("node.", node)
        add("locality.", locality)
        add("http.", http)
        add("http2.", http2)
        add("upstream.", upstream)
        add("identity.", identity)
        add("identity.workloads[].", workload)
        add("authorization.", authorization)
        add("authorization.rules[].", authorizationRule)
        add("services[].tls.", serviceTLS)
        add("services[].", service)
        add("services[].endpoints[].", endpoint)
        add("services[].discovery.", discovery)
        add("services[].balancer.", balancer)
        add("services[].locality.", serviceLocality)
        add("services[].timeouts.", serviceTimeouts)
        add("services[].limits.", limits)
        add("services[].outlierDetection.", outlierDetection)
        add("routes[].", route)
        add("routes[].match.", match)
        add("routes[].backends[].", backend)
        add("routes[].rateLimit.", rateLimit)
        add("routes[].retry.", retry)
        add("routes[].retry.backoff.", backoff)
        add("routes[].retry.budget.", budget)
        return out
    }
}

extension ConfigKey {
    /// A string value, checked by `check`.
    static func text(
        _ name: String, bound: String, _ check: @escaping @Sendable (inout Decoder, Node, String, String, inout Target) -> Void
    ) -> ConfigKey {
        ConfigKey(name: name, bound: bound) { d, node, path, target in
            if let text = d.string(node, path) { check(&d, node, path, text, &target) }
        }
    }

    /// A mapping decoded by its own key table.
    static func section<Section>(
        _ name: String, _ keys: [ConfigKey<Section>], _ field: WritableKeyPath<Target, Section> & Sendable
    ) -> ConfigKey {
        ConfigKey(name: name, bound: nil) { d, node, path, target in
            d.decode(node, path, keys, into: &target[keyPath: field])
        }
    }

    static func address(
        _ name: String, allowPortZero: Bool = false, _ field: WritableKeyPath<Target, HostPort?> & Sendable
    ) -> ConfigKey {
        ConfigKey(name: name, bound: "HOST:PORT") { d, node, path, target in
            target[keyPath: field] = d.address(node, path, allowPortZero: allowPortZero)
        }
    }

    static func listenerProtocol(_ name: String, _ field: WritableKeyPath<Target, ListenerProtocol> & Sendable) -> ConfigKey {
        ConfigKey(name: name, bound: "`detect`, `http1`, `http2`, `grpc`, `tcp`") { d, node, path, target in
            if let p = d.listenerProtocol(node, path) { target[keyPath: field] = p }
        }
    }

    static func cidrs(_ name: String, _ field: WritableKeyPath<Target, [CIDR]> & Sendable) -> ConfigKey {
        ConfigKey(name: name, bound: "list of CIDRs") { d, node, path, target in
            if let c = d.cidrs(node, path) { target[keyPath: field] = c }
        }
    }
}

/// `accessLog` written as a section.
struct AccessLogSection {
    var enabled: Bool
    var options: AccessLogConfig
}
