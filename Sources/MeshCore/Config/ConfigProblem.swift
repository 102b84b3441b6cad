/// One thing wrong with a configuration file, located by key path and line.
public struct ConfigProblem: Error, Sendable, Equatable, CustomStringConvertible {
    public enum Reason: Error, Sendable, Equatable, CustomStringConvertible {
        case syntax(String)
        case unknownKey(String, allowed: [String])
        case missingKey(String)
        case wrongType(expected: String)
        case invalidValue(String, expected: String)
        case invalidAddress(String, String)
        case invalid(String)

        public var description: String {
            switch self {
            case .syntax(let message): return "YAML syntax error: \(message)"
            case .unknownKey(let key, let allowed):
                return "unknown key '\(Self.clipped(key))' (expected one of: \(allowed.joined(separator: ", ")))"
            case .missingKey(let key): return "missing required key '\(key)'"
            case .wrongType(let expected): return "expected \(expected)"
            case .invalidValue(let value, let expected): return "invalid value '\(Self.clipped(value))': expected \(expected)"
            case .invalidAddress(let value, let why): return "invalid address '\(Self.clipped(value))': \(why)"
            case .invalid(let message): return message
            }
        }

        /// A value quoted in an error, at most 120 characters (a 10 MB value is not echoed whole).
        static func clipped(_ value: String) -> String {
            guard value.count > 120 else { return value }
            return String(value.prefix(100)) + "… (\(value.utf8.count) bytes)"
        }
    }

    /// Key path such as `services[0].endpoints[1]`; empty for the document root.
    public var path: String
    /// 1-based line and column, when the problem is tied to a place in the file.
    public var line: Int?
    public var column: Int?
    public var reason: Reason

    public init(path: String, line: Int? = nil, column: Int? = nil, reason: Reason) {
        self.path = path
        self.line = line
        self.column = column
        self.reason = reason
    }

    public var description: String {
        var s = path.isEmpty ? "(root)" : path
        if let line {
            s += " (line \(line)"
            if let column { s += ", column \(column)" }
            s += ")"
        }
        return s + ": " + reason.description
    }
}

/// A configuration that cannot be used: every problem found, in file order.
public struct ConfigError: Error, Sendable, Equatable, CustomStringConvertible {
    public var problems: [ConfigProblem]
    public init(problems: [ConfigProblem]) { self.problems = problems }
    public var description: String {
        problems.map(\.description).joined(separator: "\n")
    }
}
