import Yams

// The `identity`, `authorization` and `services[].tls` sections.
extension Decoder {
    mutating func identityPattern(_ node: Node, _ path: String) -> IdentityPattern? {
        guard let text = string(node, path) else { return nil }
        if let p = IdentityPattern(text) { return p }
        fail(
            path, node,
            .invalidValue(
                text, expected: "a SPIFFE ID (spiffe://TRUST_DOMAIN/ns/NS/sa/SA), a prefix ending in /*, or * for any identity"))
        return nil
    }

    mutating func decodeIdentity(_ node: Node, _ path: String) -> IdentityConfig? {
        marks[path] = node.mark
        var identity = IdentityConfig()
        guard let present = decode(node, path, ConfigKeys.identity, into: &identity) else {
            fail(path, node, .wrongType(expected: "a mapping with trustBundle, cert and key"))
            return nil
        }
        if !present.contains("trustBundle") { fail(path, node, .missingKey("trustBundle")) }
        if (identity.cert == nil) != (identity.key == nil) {
            fail(path, node, .invalid("cert and key go together: set both or neither"))
        }
        if identity.cert == nil && identity.workloads.isEmpty {
            fail(path, node, .missingKey("cert and key (or, in node mode, workloads)"))
        }
        return identity
    }

    mutating func decodeWorkload(_ node: Node, _ path: String) -> WorkloadIdentityConfig? {
        var w = WorkloadIdentityConfig()
        guard let present = decode(node, path, ConfigKeys.workload, into: &w) else {
            fail(path, node, .wrongType(expected: "a mapping with pods, cert and key"))
            return nil
        }
        for key in ["pods", "cert", "key"] where !present.contains(key) { fail(path, node, .missingKey(key)) }
        return w
    }

    mutating func decodeAuthorizationRule(_ node: Node, _ path: String) -> AuthorizationPolicy.Rule? {
        var rule = AuthorizationPolicy.Rule(from: [])
        guard let present = decode(node, path, ConfigKeys.authorizationRule, into: &rule) else {
            fail(path, node, .wrongType(expected: "a mapping with from (and optionally to, pathPrefix)"))
            return nil
        }
        if !present.contains("from") { fail(path, node, .missingKey("from")) }
        return rule
    }

    /// Checks that need the whole document: identities and the placements they apply to.
    mutating func validateIdentity(_ config: MeshConfig) {
        if config.inbound.tls == .strict || config.inbound.tls == .permissive, config.identity == nil {
            fail(at: "inbound.tls", .invalid("\(config.inbound.tls!.rawValue) needs an identity section"))
        }
        for (i, service) in config.services.enumerated() where service.tls != nil && config.identity == nil {
            fail(at: "services[\(i)].tls", .invalid("mTLS to a service needs this meshd's identity section"))
        }
        for (i, service) in config.services.enumerated() where service.tls != nil && service.protocol == .tcp {
            fail(at: "services[\(i)].tls", .invalid("tls applies to HTTP services (meshd to meshd), not protocol: tcp"))
        }
        if let identity = config.identity {
            if config.mode == .sidecar && !identity.workloads.isEmpty {
                fail(at: "identity.workloads", .invalid("workloads apply to node mode; a sidecar has one identity (cert, key)"))
            }
            var owner: [IPAddress: Int] = [:]
            for (i, w) in identity.workloads.enumerated() {
                for pod in w.pods {
                    if let first = owner[pod] {
                        fail(at: "identity.workloads[\(i)].pods", .invalid("pod \(pod) is already in identity.workloads[\(first)]"))
                    } else {
                        owner[pod] = i
                    }
                }
            }
        }
    }
}

extension ConfigKeys {
    static let identity: [ConfigKey<IdentityConfig>] = [
        .file("trustBundle", \.trustBundle),
        .optionalFile("cert", \.cert),
        .optionalFile("key", \.key),
        ConfigKey(name: "workloads", bound: nil) { d, node, path, c in
            guard let items = d.sequence(node) else {
                d.fail(path, node, .wrongType(expected: "a list of {pods, cert, key}"))
                return
            }
            c.workloads = items.enumerated().compactMap { d.decodeWorkload($1, "\(path)[\($0)]") }
        },
        .duration("handshakeTimeout", max: .seconds(300), \.handshakeTimeout),
        .duration("reloadInterval", max: .seconds(3600), \.reloadInterval),
    ]

    static let workload: [ConfigKey<WorkloadIdentityConfig>] = [
        ConfigKey(name: "pods", bound: "list of IPs") { d, node, path, w in
            guard let items = d.sequence(node) else {
                d.fail(path, node, .wrongType(expected: "a list of pod IPs"))
                return
            }
            w.pods = items.enumerated().compactMap { i, item in
                guard let text = d.string(item, "\(path)[\(i)]") else { return nil }
                if let ip = IPAddress(text) { return ip }
                d.fail("\(path)[\(i)]", item, .invalidValue(text, expected: "an IP address"))
                return nil
            }
        },
        .file("cert", \.cert),
        .file("key", \.key),
    ]

    static let serviceTLS: [ConfigKey<ServiceTLSConfig>] = [
        ConfigKey(name: "identity", bound: "SPIFFE ID or pattern") { d, node, path, t in
            if let p = d.identityPattern(node, path) { t.identity = p }
        }
    ]

    static let authorization: [ConfigKey<AuthorizationPolicy>] = [
        .text("defaultPolicy", bound: "`all-unauthenticated`, `all-authenticated`, `deny`") { d, node, path, text, a in
            if let p = AuthorizationPolicy.DefaultPolicy(rawValue: text) {
                a.defaultPolicy = p
            } else {
                d.fail(path, node, .invalidValue(text, expected: "all-unauthenticated, all-authenticated or deny"))
            }
        },
        ConfigKey(name: "rules", bound: nil) { d, node, path, a in
            guard let items = d.sequence(node) else {
                d.fail(path, node, .wrongType(expected: "a list of rules"))
                return
            }
            a.rules = items.enumerated().compactMap { d.decodeAuthorizationRule($1, "\(path)[\($0)]") }
        },
    ]

    static let authorizationRule: [ConfigKey<AuthorizationPolicy.Rule>] = [
        ConfigKey(name: "to", bound: "SPIFFE ID or pattern") { d, node, path, r in r.to = d.identityPattern(node, path) },
        ConfigKey(name: "from", bound: "list of SPIFFE IDs or patterns") { d, node, path, r in
            // One pattern or a list of them.
            guard let items = d.sequence(node) else {
                if let p = d.identityPattern(node, path) { r.from = [p] }
                return
            }
            r.from = items.enumerated().compactMap { d.identityPattern($1, "\(path)[\($0)]") }
        },
        .text("pathPrefix", bound: "a path starting with /") { d, node, path, text, r in
            if text.hasPrefix("/") {
                r.pathPrefix = text
            } else {
                d.fail(path, node, .invalidValue(text, expected: "a path starting with /"))
            }
        },
    ]
}

extension ConfigKey {
    static func file(_ name: String, _ field: WritableKeyPath<Target, String> & Sendable) -> ConfigKey {
        ConfigKey(name: name, bound: "a file path") { d, node, path, target in
            if let text = d.filePath(node, path) { target[keyPath: field] = text }
        }
    }

    static func optionalFile(_ name: String, _ field: WritableKeyPath<Target, String?> & Sendable) -> ConfigKey {
        ConfigKey(name: name, bound: "a file path") { d, node, path, target in
            if let text = d.filePath(node, path) { target[keyPath: field] = text }
        }
    }
}

extension Decoder {
    /// A non-empty string naming a file (not read here: meshd reads it at start and on change).
    mutating func filePath(_ node: Node, _ path: String) -> String? {
        guard let text = string(node, path) else { return nil }
        if text.isEmpty {
            fail(path, node, .invalidValue(text, expected: "a file path"))
            return nil
        }
        return text
    }
}
