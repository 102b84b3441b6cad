/// A small JSON value with deterministic key order, for the admin API's answers.
public indirect enum JSONValue: Sendable, Equatable, ExpressibleByStringLiteral, ExpressibleByIntegerLiteral,
    ExpressibleByBooleanLiteral, ExpressibleByArrayLiteral
{
    case null
    case bool(Bool)
    case int(Int64)
    case double(Double)
    case string(String)
    case array([JSONValue])
    /// Ordered key/value pairs.
    case object([(String, JSONValue)])

    public init(stringLiteral value: String) { self = .string(value) }
    public init(integerLiteral value: Int) { self = .int(Int64(value)) }
    public init(booleanLiteral value: Bool) { self = .bool(value) }
    public init(arrayLiteral elements: JSONValue...) { self = .array(elements) }

    public static func == (a: JSONValue, b: JSONValue) -> Bool { a.rendered() == b.rendered() }

    public static func optional(_ s: String?) -> JSONValue { s.map { .string($0) } ?? .null }

    /// Compact (or indented) JSON text.
    public func rendered(pretty: Bool = false) -> String {
        var out = ""
        write(into: &out, pretty: pretty, indent: 0)
        return out
    }

    private func write(into out: inout String, pretty: Bool, indent: Int) {
        switch self {
        case .null: out += "null"
        case .bool(let b): out += b ? "true" : "false"
        case .int(let i): out += String(i)
        case .double(let d):
            if d.isFinite {
                out += d == d.rounded() && abs(d) < 1e15 ? String(Int64(d)) : String(d)
            } else {
                out += "null"
            }
        case .string(let s): Self.quote(s, into: &out)
        case .array(let items):
            if items.isEmpty {
                out += "[]"
                return
            }
            out += "["
            for (i, item) in items.enumerated() {
                if i > 0 { out += "," }
                if pretty { newline(&out, indent + 1) }
                item.write(into: &out, pretty: pretty, indent: indent + 1)
            }
            if pretty { newline(&out, indent) }
            out += "]"
        case .object(let pairs):
            if pairs.isEmpty {
                out += "{}"
                return
            }
            out += "{"
            for (i, (k, v)) in pairs.enumerated() {
                if i > 0 { out += "," }
                if pretty { newline(&out, indent + 1) }
                Self.quote(k, into: &out)
                out += pretty ? ": " : ":"
                v.write(into: &out, pretty: pretty, indent: indent + 1)
            }
            if pretty { newline(&out, indent) }
            out += "}"
        }
    }

    private func newline(_ out: inout String, _ indent: Int) {
        out += "\n" + String(repeating: "  ", count: indent)
    }

    /// `s` as a JSON string literal (also a valid YAML double-quoted scalar: YAML is a superset).
    public static func quoted(_ s: String) -> String {
        var out = ""
        quote(s, into: &out)
        return out
    }

    /// Escaping is `JSONBytes.appendQuoted`'s (the access log writes with it too).
    public static func quote(_ s: String, into out: inout String) {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(s.utf8.count + 2)
        JSONBytes.appendQuoted(s, to: &bytes)
        out += String(decoding: bytes, as: UTF8.self)
    }
}

extension MeshConfig {
    /// The effective configuration (defaults filled in) as the admin API's `/config` shows it.
    public var json: JSONValue {
        .object([
            ("mode", .string(mode.rawValue)),
            ("nodeIP", .optional(nodeIP)),
            ("threads", .int(Int64(threads))),
            ("outbound", .object([("listen", .string(effectiveOutboundListen.description))])),
            (
                "inbound",
                .object([("listen", .string(effectiveInboundListen.description)), ("app", .string(inbound.app.description))])
            ),
            ("admin", .object([("listen", .string(admin.listen.description))])),
            ("upgrade", .object([("socket", .optional(upgrade.socket)), ("afterHandover", .string(upgrade.afterHandover.rawValue))])),
            (
                "node",
                .object([
                    ("podCIDRs", .array(node.podCIDRs.map { .string($0.description) })),
                    ("allowedSources", .array(effectiveAllowedSources.map { .string($0.description) })),
                ])
            ),
            (
                "http",
                .object([
                    ("maxHeaderBytes", .int(Int64(http.maxHeaderBytes))),
                    ("headerReadTimeout", .string(http.headerReadTimeout.description)),
                    ("idleTimeout", .string(http.idleTimeout.description)),
                    ("maxConnections", .int(Int64(http.maxConnections))),
                ])
            ),
            (
                "upstream",
                .object([
                    ("connectTimeout", .string(upstream.connectTimeout.description)),
                    ("requestTimeout", .string(upstream.requestTimeout.description)),
                    ("idleTimeout", .string(upstream.idleTimeout.description)),
                    ("maxIdlePerEndpoint", .int(Int64(upstream.maxIdlePerEndpoint))),
                ])
            ),
            ("drainTimeout", .string(drainTimeout.description)),
            (
                "accessLog",
                .object([
                    ("enabled", .bool(accessLog)), ("path", accessLogOptions.path.map { .string($0) } ?? .null),
                    ("sampleRatio", .double(accessLogOptions.sampleRatio)),
                ])
            ),
            ("services", .array(services.map(\.json))),
            ("routes", .array(routes.map(\.json))),
        ])
    }
}

extension ServiceConfig {
    public var json: JSONValue {
        .object([
            ("name", .string(name)),
            ("balancer", .string(balancer.algorithm.rawValue)),
            ("endpoints", .array(endpoints.map(\.json))),
        ])
    }
}

extension EndpointConfig {
    public var json: JSONValue {
        var pairs: [(String, JSONValue)] = [("address", .string(address.description))]
        if let via { pairs.append(("via", .string(via.description))) }
        pairs.append(("weight", .int(Int64(weight))))
        return .object(pairs)
    }
}

extension RouteConfig {
    public var json: JSONValue {
        var match: [(String, JSONValue)] = [("authority", .string(self.match.authority ?? "*"))]
        if let p = self.match.pathPrefix { match.append(("pathPrefix", .string(p))) }
        if let m = self.match.method { match.append(("method", .string(m))) }
        if !self.match.headers.isEmpty {
            match.append(("headers", .object(self.match.headers.map { ($0.name, .string($0.value)) })))
        }
        var pairs: [(String, JSONValue)] = []
        if let name { pairs.append(("name", .string(name))) }
        pairs.append(("match", .object(match)))
        pairs.append(
            ("backends", .array(backends.map { .object([("service", .string($0.service)), ("weight", .int(Int64($0.weight)))]) })))
        if let timeout { pairs.append(("timeout", .string(timeout.description))) }
        return .object(pairs)
    }
}
