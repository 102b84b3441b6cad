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
