import Yams

/// Adds meshd to the pods of Kubernetes manifests, editing the YAML text in place so that comments,
/// key order and every unrelated line survive byte for byte.
///
/// Yams composes the documents (for structure and line/column marks); the edits are line insertions
/// (and, for an empty flow list such as `volumes: []`, removing the `[]`). Workloads: Pod (`spec`),
/// Deployment, StatefulSet, DaemonSet, ReplicaSet, ReplicationController, Job (`spec.template.spec`),
/// CronJob (`spec.jobTemplate.spec.template.spec`), and those inside a `List`'s `items`. Other
/// documents are left alone.
struct ManifestInjector {
    enum Mode: String, Sendable, CaseIterable {
        /// meshd as a native sidecar, with iptables capture.
        case sidecar
        /// No sidecar: the app containers use the node's meshd as their HTTP proxy.
        case node
    }

    struct Options: Sendable {
        var mode: Mode = .sidecar
        var image = "meshd:latest"
        /// Image of the traffic-capture init container (needs meshd and iptables); the meshd image by default.
        var initImage: String?
        var configMap = "meshd-config"
        /// meshd runs as this user; the capture rules let its own traffic out unredirected.
        var proxyUID = 4140
    }

    struct Failure: Error, CustomStringConvertible {
        var description: String
    }

    struct Outcome {
        var text: String
        /// One line per workload: what was done, or why it was skipped.
        var messages: [String]
        var changed: Bool
    }

    static let outboundPort = 4140
    static let inboundPort = 4143
    static let adminPort = 4191
    static let sidecarName = "meshd"
    static let initName = "meshd-init"
    static let volumeName = "meshd-config"
    static let configMountPath = "/etc/meshd"

    let options: Options

    init(options: Options = Options()) { self.options = options }

    func inject(_ input: String) throws -> Outcome {
        var text = YAMLText(input)
        var messages: [String] = []
        var documents: [Node] = []
        do {
            let parser = try Yams.Parser(yaml: input)
            while let node = try parser.nextRoot() { documents.append(node) }
        } catch {
            throw Failure(description: "cannot parse the YAML: \(error)")
        }
        for (i, doc) in documents.enumerated() {
            try visit(resource: doc, document: i + 1, text: &text, messages: &messages)
        }
        return Outcome(text: text.hasEdits ? text.rendered() : input, messages: messages, changed: text.hasEdits)
    }

    // MARK: Finding the pod specs

    static func podSpecPath(kind: String) -> [String]? {
        switch kind {
        case "Pod": return ["spec"]
        case "Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "ReplicationController", "Job":
            return ["spec", "template", "spec"]
        case "CronJob": return ["spec", "jobTemplate", "spec", "template", "spec"]
        default: return nil
        }
    }

    /// The key and value nodes of `key` in a mapping node.
    static func entry(_ node: Node, _ key: String) -> (key: Node, value: Node)? {
        guard case .mapping(let m) = node else { return nil }
        for (k, v) in m where k.string == key { return (k, v) }
        return nil
    }

    private func visit(resource node: Node, document: Int, text: inout YAMLText, messages: inout [String]) throws {
        guard case .mapping = node, let kind = Self.entry(node, "kind")?.value.string else { return }
        if kind == "List" || kind.hasSuffix("List") {
            if case .sequence(let items)? = Self.entry(node, "items")?.value {
                for item in items { try visit(resource: item, document: document, text: &text, messages: &messages) }
            }
            return
        }
        guard let path = Self.podSpecPath(kind: kind) else { return }
        let name = Self.entry(node, "metadata").flatMap { Self.entry($0.value, "name")?.value.string } ?? "(unnamed)"
        let label = "\(kind.lowercased())/\(name)"
        var spec = node
        for key in path {
            guard let next = Self.entry(spec, key)?.value, case .mapping = next else {
                messages.append("\(label): no \(path.joined(separator: ".")); skipped")
                return
            }
            spec = next
        }
        guard let mark = spec.mark else { return }
        if text.character(line: mark.line - 1, column: mark.column - 1) == "{" {
            throw Failure(
                description:
                    "\(label): line \(mark.line): \(path.joined(separator: ".")) is written in flow style ({…}); write it in block style to inject"
            )
        }
        if Self.entry(spec, "hostNetwork")?.value.bool == true {
            switch options.mode {
            case .sidecar:
                messages.append(
                    "\(label): skipped (document \(document)): hostNetwork pod; it shares the node's network namespace, "
                        + "so a sidecar's iptables rules would capture the whole node's traffic")
            case .node:
                messages.append(
                    "\(label): skipped (document \(document)): hostNetwork pod; it runs in the node's network namespace, "
                        + "next to the node proxy, and is not wired to it")
            }
            return
        }
        let names = Self.containerNames(spec, "initContainers") + Self.containerNames(spec, "containers")
        switch options.mode {
        case .sidecar:
            if names.contains(Self.sidecarName) {
                messages.append("\(label): already has a \(Self.sidecarName) container; unchanged")
                return
            }
            try injectSidecar(spec: spec, label: label, text: &text)
            messages.append("\(label): meshd sidecar injected")
        case .node:
            if names.contains(Self.sidecarName) {
                messages.append("\(label): has a \(Self.sidecarName) sidecar; not wired to the node proxy")
                return
            }
            let changed = try wireToNodeProxy(spec: spec, label: label, text: &text)
            messages.append(changed ? "\(label): wired to the node proxy" : "\(label): already wired to the node proxy; unchanged")
        }
    }

    static func containerNames(_ spec: Node, _ key: String) -> [String] {
        guard case .sequence(let s)? = entry(spec, key)?.value else { return [] }
        return s.compactMap { entry($0, "name")?.value.string }
    }

    /// The offset of a sequence's `-` from its key in this pod spec (0 for `key:\n- a`, 2 for
    /// `key:\n  - a`), so that inserted lists look like the document's own; 2 when unknown.
    static func sequenceOffset(_ spec: Node, text: YAMLText) -> Int {
        for key in ["containers", "initContainers", "volumes"] {
            if let (k, v) = entry(spec, key), case .sequence = v, let km = k.mark, let vm = v.mark,
                text.character(line: vm.line - 1, column: vm.column - 1) == "-"
            {
                return max(0, vm.column - km.column)
            }
        }
        return 2
    }

    // MARK: Sidecar

    private func injectSidecar(spec: Node, label: String, text: inout YAMLText) throws {
        let offset = Self.sequenceOffset(spec, text: text)
        var appPort: Int? = nil
        if case .sequence(let containers)? = Self.entry(spec, "containers")?.value, let first = containers.first,
            case .sequence(let ports)? = Self.entry(first, "ports")?.value, let port = ports.first
        {
            appPort = Self.entry(port, "containerPort")?.value.int
        }
        try insertItems(
            [initContainer(), sidecarContainer(appPort: appPort)], key: "initContainers", in: spec, atFront: true,
            sequenceOffset: offset, label: label, text: &text)
        let volumes = Self.containerNames(spec, "volumes")
        if !volumes.contains(Self.volumeName) {
            let volume = YAMLValue.map([
                ("name", .string(Self.volumeName)), ("configMap", .map([("name", .string(options.configMap))])),
            ])
            try insertItems([volume], key: "volumes", in: spec, atFront: false, sequenceOffset: offset, label: label, text: &text)
        }
    }

    /// The traffic-capture init container: `meshd capture install` (no shell) — inbound TCP → 4143
    /// (except the admin port), outbound TCP → 4140 (except meshd's own traffic, by UID, and
    /// loopback), IPv4 and IPv6. Safe to run again in the same pod.
    func initContainer() -> YAMLValue {
        .map([
            ("name", .string(Self.initName)),
            ("image", .string(options.initImage ?? options.image)),
            ("command", .flowList(["meshd"])),
            (
                "args",
                .flowList([
                    "capture", "install", "--mode=sidecar", "--proxy-uid=\(options.proxyUID)", "--outbound-port=\(Self.outboundPort)",
                    "--inbound-port=\(Self.inboundPort)", "--admin-port=\(Self.adminPort)",
                ])
            ),
            (
                "securityContext",
                .map([
                    ("runAsUser", .plain("0")), ("runAsNonRoot", .plain("false")), ("allowPrivilegeEscalation", .plain("false")),
                    ("capabilities", .map([("add", .flowList(["NET_ADMIN", "NET_RAW"])), ("drop", .flowList(["ALL"]))])),
                ])
            ),
        ])
    }

    /// meshd as a native sidecar: an init container with `restartPolicy: Always` (Kubernetes ≥ 1.29),
    /// so it is ready before the app starts and does not keep a Job from completing.
    func sidecarContainer(appPort: Int?) -> YAMLValue {
        var env: [YAMLValue] = [.map([("name", .string("MESHD_MODE")), ("value", .string("sidecar"))])]
        if let appPort { env.append(.map([("name", .string("MESHD_APP_PORT")), ("value", .string(String(appPort)))])) }
        func probe(_ path: String, period: Int, failureThreshold: Int? = nil) -> YAMLValue {
            var fields: [(String, YAMLValue)] = [
                ("httpGet", .map([("path", .string(path)), ("port", .plain(String(Self.adminPort)))])),
                ("periodSeconds", .plain(String(period))),
            ]
            if let failureThreshold { fields.append(("failureThreshold", .plain(String(failureThreshold)))) }
            return .map(fields)
        }
        return .map([
            ("name", .string(Self.sidecarName)),
            ("image", .string(options.image)),
            ("restartPolicy", .plain("Always")),
            ("args", .flowList(["--config", "\(Self.configMountPath)/meshd.yaml"])),
            ("env", .list(env)),
            (
                "ports",
                .list([
                    .map([("name", .string("mesh-outbound")), ("containerPort", .plain(String(Self.outboundPort)))]),
                    .map([("name", .string("mesh-inbound")), ("containerPort", .plain(String(Self.inboundPort)))]),
                    .map([("name", .string("mesh-admin")), ("containerPort", .plain(String(Self.adminPort)))]),
                ])
            ),
            // The kubelet starts the app once a native sidecar's startup probe passes.
            ("startupProbe", probe("/ready", period: 1, failureThreshold: 30)),
            ("readinessProbe", probe("/ready", period: 2)),
            ("livenessProbe", probe("/live", period: 10)),
            (
                "resources",
                .map([
                    ("requests", .map([("cpu", .string("50m")), ("memory", .string("32Mi"))])),
                    ("limits", .map([("memory", .string("128Mi"))])),
                ])
            ),
            (
                "securityContext",
                .map([
                    ("runAsUser", .plain(String(options.proxyUID))), ("runAsGroup", .plain(String(options.proxyUID))),
                    ("runAsNonRoot", .plain("true")), ("allowPrivilegeEscalation", .plain("false")),
                    ("readOnlyRootFilesystem", .plain("true")), ("capabilities", .map([("drop", .flowList(["ALL"]))])),
                ])
            ),
            (
                "volumeMounts",
                .list([
                    .map([("name", .string(Self.volumeName)), ("mountPath", .string(Self.configMountPath)), ("readOnly", .plain("true"))])
                ])
            ),
        ])
    }

    // MARK: Node proxy

    /// Adds NODE_IP (downward API) and http_proxy to every app container that lacks them; returns
    /// whether anything changed.
    private func wireToNodeProxy(spec: Node, label: String, text: inout YAMLText) throws -> Bool {
        guard case .sequence(let containers)? = Self.entry(spec, "containers")?.value else { return false }
        let offset = Self.sequenceOffset(spec, text: text)
        var changed = false
        for container in containers {
            guard case .mapping = container, let mark = container.mark else { continue }
            if text.character(line: mark.line - 1, column: mark.column - 1) == "{" {
                throw Failure(description: "\(label): line \(mark.line): a container written in flow style ({…}); write it in block style")
            }
            let existing = Self.containerNames(container, "env")
            var items: [YAMLValue] = []
            if !existing.contains("NODE_IP") {
                items.append(
                    .map([
                        ("name", .string("NODE_IP")),
                        ("valueFrom", .map([("fieldRef", .map([("fieldPath", .string("status.hostIP"))]))])),
                    ]))
            }
            if !existing.contains("http_proxy") {
                items.append(.map([("name", .string("http_proxy")), ("value", .string("http://$(NODE_IP):\(Self.outboundPort)"))]))
            }
            if items.isEmpty { continue }
            try insertItems(items, key: "env", in: container, atFront: false, sequenceOffset: offset, label: label, text: &text)
            changed = true
        }
        return changed
    }

    // MARK: Text edits

    /// Inserts `items` into the block sequence under `key` of `mapping` (at its front or its end),
    /// creating the key when it is missing or turning an empty value (`key:`, `key: []`, `key: null`)
    /// into a block sequence.
    private func insertItems(
        _ items: [YAMLValue], key: String, in mapping: Node, atFront: Bool, sequenceOffset: Int, label: String,
        text: inout YAMLText
    ) throws {
        guard let mapMark = mapping.mark else { return }
        let mapLine = mapMark.line - 1
        let mapColumn = mapMark.column - 1
        func lines(dashColumn: Int) -> [String] {
            items.flatMap { YAMLValue.itemLines($0, dashColumn: dashColumn, sequenceOffset: sequenceOffset) }
        }
        guard let (k, v) = Self.entry(mapping, key), let km = k.mark else {
            // No such key: add it. initContainers goes before `containers:` (and the comments right
            // above it), anything else after the mapping's last line.
            let newLines = [YAMLValue.pad(mapColumn) + key + ":"] + lines(dashColumn: mapColumn + sequenceOffset)
            if atFront, let (ck, _) = Self.entry(mapping, "containers"), let cm = ck.mark, cm.column - 1 == mapColumn {
                var at = cm.line - 1
                while at - 1 > mapLine && text.isComment(at - 1) && text.indent(at - 1) == mapColumn { at -= 1 }
                text.insert(newLines, before: at)
            } else {
                text.insert(newLines, after: text.lastLineOfMapping(firstLine: mapLine, column: mapColumn))
            }
            return
        }
        let keyLine = km.line - 1
        let keyColumn = km.column - 1
        switch v {
        case .sequence(let s):
            guard let vm = s.mark else { return }
            let first = text.character(line: vm.line - 1, column: vm.column - 1)
            if first == "[" {
                guard s.isEmpty, vm.line - 1 == keyLine else {
                    throw Failure(
                        description: "\(label): line \(km.line): \(key) is a flow sequence ([…]); write it in block style to inject")
                }
                try removeEmptyFlow(line: keyLine, column: vm.column - 1, token: nil, label: label, key: key, text: &text)
                text.insert(lines(dashColumn: keyColumn + sequenceOffset), after: keyLine)
                return
            }
            let dashColumn = vm.column - 1
            if atFront {
                text.insert(lines(dashColumn: dashColumn), after: keyLine)
            } else {
                text.insert(
                    lines(dashColumn: dashColumn), after: text.lastLineOfValue(keyLine: keyLine, keyColumn: keyColumn, sequence: true))
            }
        case .scalar(let scalar)
        where scalar.string.isEmpty || (scalar.style == .plain && ["null", "Null", "NULL", "~"].contains(scalar.string)):
            if let sm = scalar.mark, sm.line - 1 == keyLine, !scalar.string.isEmpty {
                try removeEmptyFlow(line: keyLine, column: sm.column - 1, token: scalar.string, label: label, key: key, text: &text)
            }
            text.insert(lines(dashColumn: keyColumn + sequenceOffset), after: keyLine)
        default:
            throw Failure(description: "\(label): line \(km.line): \(key) is not a list")
        }
    }

    /// Removes an empty value written on the key's line: `[]` (from `column` to the next `]`) or the
    /// null `token`.
    private func removeEmptyFlow(line: Int, column: Int, token: String?, label: String, key: String, text: inout YAMLText) throws {
        let scalars = Array(text.line(line).unicodeScalars)
        var end = column + 1
        if let token {
            end = column + token.unicodeScalars.count - 1
        } else {
            while end < scalars.count && scalars[end] != "]" { end += 1 }
        }
        guard end < scalars.count else {
            throw Failure(description: "\(label): line \(line + 1): cannot find the end of \(key)'s empty list")
        }
        // With nothing but spaces after it, the spaces before it go too (no trailing whitespace); with a
        // comment after it, the spaces up to the comment go (`key: [] # c` → `key: # c`).
        var from = column
        if scalars[(end + 1)...].allSatisfy({ $0 == " " }) {
            while from > 0 && scalars[from - 1] == " " { from -= 1 }
            end = scalars.count - 1
        } else {
            while end + 1 < scalars.count && scalars[end + 1] == " " { end += 1 }
        }
        text.replace(line: line, from: from, to: end + 1, with: "")
    }
}
