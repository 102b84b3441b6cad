import Yams

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

    /// A section decoded by its key table (see `ConfigKeys`): unknown keys are reported, each known
    /// one decodes itself. Returns the keys present, nil when `node` is not a mapping.
    @discardableResult
    mutating func decode<Target>(
        _ node: Node, _ path: String, _ keys: [ConfigKey<Target>], into target: inout Target
    ) -> [String]? {
        guard let entries = mapping(node, path, allowed: keys.map(\.name)) else { return nil }
        for (k, v) in entries {
            if let key = keys.first(where: { $0.name == k }) { key.decode(&self, v, join(path, k), &target) }
        }
        return entries.map(\.0)
    }

    func sequence(_ node: Node) -> [Node]? {
        if case .sequence(let seq) = node { return Array(seq) }
        return nil
    }
}

extension Node {
    var string: String? {
        if case .scalar(let s) = self { return s.string }
        return nil
    }
}
