import Foundation
import Testing

@testable import meshctl

@Suite("inject")
struct InjectTests {
    /// tests/e2e/golden/inject: in/<name>.yaml, and the expected sidecar/<name>.yaml and node/<name>.yaml.
    static let golden = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("tests/e2e/golden/inject")

    static var goldenNames: [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: golden.appendingPathComponent("in").path)) ?? [])
            .filter { $0.hasSuffix(".yaml") }.sorted()
    }

    static func read(_ dir: String, _ name: String) throws -> String {
        try String(contentsOf: golden.appendingPathComponent(dir).appendingPathComponent(name), encoding: .utf8)
    }

    static func inject(_ text: String, _ mode: ManifestInjector.Mode = .sidecar) throws -> ManifestInjector.Outcome {
        try ManifestInjector(options: .init(mode: mode)).inject(text)
    }

    @Test("golden files exist for every kind")
    func goldenKinds() throws {
        let names = Self.goldenNames
        #expect(names.count >= 7)
        var kinds = Set<String>()
        for n in names {
            for line in try Self.read("in", n).split(separator: "\n") {
                let t = line.trimmingCharacters(in: .whitespaces)
                if t.hasPrefix("kind: ") || t.hasPrefix("- kind: ") { kinds.insert(String(t.split(separator: " ").last!)) }
            }
        }
        for k in ["Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob", "Pod", "List"] {
            #expect(kinds.contains(k), "no golden \(k)")
        }
    }

    @Test("every golden input gives its expected output, and injecting the output again changes nothing", arguments: ["sidecar", "node"])
    func goldenFiles(mode: String) throws {
        for name in Self.goldenNames {
            let input = try Self.read("in", name)
            let expected = try Self.read(mode, name)
            let out = try Self.inject(input, ManifestInjector.Mode(rawValue: mode)!)
            #expect(out.text == expected, "\(mode)/\(name) differs from the golden file")
            let again = try Self.inject(out.text, ManifestInjector.Mode(rawValue: mode)!)
            #expect(again.text == out.text, "\(mode)/\(name): second injection changed the text")
            #expect(!again.changed)
        }
    }

    @Test("every input line survives, in order (only lines are added, plus an emptied [] / null)")
    func linesSurvive() throws {
        for name in Self.goldenNames {
            let input = try Self.read("in", name).split(separator: "\n", omittingEmptySubsequences: false)
            for mode in ManifestInjector.Mode.allCases {
                let out = try Self.inject(input.joined(separator: "\n"), mode).text.split(separator: "\n", omittingEmptySubsequences: false)
                var i = out.startIndex
                for line in input {
                    let emptied = Self.emptied(line)
                    while i < out.endIndex && out[i] != line && String(out[i]) != emptied { i = out.index(after: i) }
                    #expect(i < out.endIndex, "\(name) (\(mode)): lost line '\(line)'")
                    if i < out.endIndex { i = out.index(after: i) }
                }
            }
        }
    }

    /// A line as it reads once its empty value (`[]`, `null`, `~`) is removed: `key: [] # c` → `key: # c`.
    static func emptied(_ line: Substring) -> String {
        guard let colon = line.firstIndex(of: ":") else { return String(line) }
        var rest = line[line.index(after: colon)...].drop { $0 == " " }
        for token in ["[]", "null", "~"] where rest.hasPrefix(token) {
            rest = rest.dropFirst(token.count).drop { $0 == " " }
            return String(line[...colon]) + (rest.isEmpty ? "" : " " + rest)
        }
        return String(line)
    }

    @Test("hostNetwork pods are skipped with a message; others in the same file are injected")
    func hostNetwork() throws {
        let out = try Self.inject(try Self.read("in", "hostnetwork.yaml"))
        #expect(out.messages.contains { $0.hasPrefix("daemonset/node-exporter: skipped") && $0.contains("hostNetwork") })
        #expect(out.messages.contains("deployment/api: meshd sidecar injected"))
        let node = try Self.inject(try Self.read("in", "hostnetwork.yaml"), .node)
        #expect(node.messages.contains { $0.hasPrefix("daemonset/node-exporter: skipped") })
    }

    static let minimal = """
        apiVersion: v1
        kind: Pod
        metadata:
          name: p
        spec:
          containers:
            - name: app
              image: app:1
        """

    @Test("CRLF line endings and a missing final newline are kept")
    func lineEndings() throws {
        let crlf = Self.minimal.replacingOccurrences(of: "\n", with: "\r\n")
        let out = try Self.inject(crlf).text
        #expect(!out.replacingOccurrences(of: "\r\n", with: "").contains("\n"), "a bare LF slipped in")
        #expect(out.hasPrefix("apiVersion: v1\r\nkind: Pod\r\n"))
        let lf = try Self.inject(Self.minimal).text
        #expect(lf.replacingOccurrences(of: "\r", with: "") == out.replacingOccurrences(of: "\r", with: ""))
    }

    @Test("a pod that already has a meshd container is left alone")
    func existingMeshd() throws {
        let text = Self.minimal.replacingOccurrences(of: "- name: app", with: "- name: meshd")
        let out = try Self.inject(text)
        #expect(out.text == text)
        #expect(out.messages == ["pod/p: already has a meshd container; unchanged"])
    }

    @Test("empty values become lists: `initContainers:`, `volumes: null`, `env: ~`")
    func emptyValues() throws {
        let text = """
            kind: Pod
            metadata: {name: p}
            spec:
              initContainers:
              containers:
              - name: app
                image: app:1
                env: ~
              volumes: null
            """
        let out = try Self.inject(text).text
        #expect(out.contains("  initContainers:\n  - name: meshd-init\n"))
        #expect(out.contains("  volumes:\n  - name: meshd-config\n    configMap:\n      name: meshd-config"))
        let node = try Self.inject(text, .node).text
        #expect(node.contains("    env:\n    - name: NODE_IP\n"))
        #expect(!node.contains("~"))
    }

    @Test("flow-style lists that are not empty are refused with the line, not mangled")
    func flowRefused() throws {
        let text = """
            kind: Pod
            metadata: {name: p}
            spec:
              containers: [{name: app, image: app}]
              volumes: [{name: v, emptyDir: {}}]
            """
        #expect(throws: ManifestInjector.Failure.self) { try Self.inject(text) }
        do {
            _ = try Self.inject(text)
        } catch {
            #expect("\(error)".contains("line 5"))
        }
        let flowPod = "kind: Pod\nmetadata: {name: p}\nspec: {containers: [{name: a, image: b}]}\n"
        #expect(throws: ManifestInjector.Failure.self) { try Self.inject(flowPod) }
    }

    @Test("documents without pods, and unknown kinds, pass through unchanged; bad YAML is an error")
    func passThrough() throws {
        let text =
            "# just config\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: c\ndata:\n  a: b\n---\n---\nkind: Widget\nspec:\n  containers: []\n"
        let out = try Self.inject(text)
        #expect(out.text == text)
        #expect(!out.changed)
        #expect(throws: ManifestInjector.Failure.self) { try Self.inject("kind: Pod\nspec: [\n") }
    }

    @Test("options: images, ConfigMap name, proxy UID")
    func options() throws {
        let out = try ManifestInjector(
            options: .init(
                mode: .sidecar, image: "registry.local/meshd:1.2", initImage: "registry.local/meshd-init:1.2", configMap: "web-mesh",
                proxyUID: 2102)
        ).inject(Self.minimal).text
        #expect(out.contains("image: registry.local/meshd:1.2"))
        #expect(out.contains("image: registry.local/meshd-init:1.2"))
        #expect(out.contains("name: web-mesh"))
        #expect(out.contains("--proxy-uid=2102"))
        #expect(out.contains("runAsUser: 2102"))
    }

    @Test("scalars are quoted exactly when a plain scalar would read back differently")
    func quoting() {
        #expect(YAMLValue.scalarText("meshd:latest") == "meshd:latest")
        #expect(YAMLValue.scalarText("/ready") == "/ready")
        #expect(YAMLValue.scalarText("8080") == "\"8080\"")
        #expect(YAMLValue.scalarText("true") == "\"true\"")
        #expect(YAMLValue.scalarText("1.10") == "\"1.10\"")
        #expect(YAMLValue.scalarText("http://$(NODE_IP):4140") == "\"http://$(NODE_IP):4140\"")
        #expect(YAMLValue.scalarText("a: b") == "\"a: b\"")
        #expect(YAMLValue.scalarText("") == "\"\"")
    }
}
