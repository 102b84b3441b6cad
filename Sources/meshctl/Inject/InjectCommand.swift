import ArgumentParser
import Foundation

struct Inject: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Add meshd to the pods of Kubernetes manifests (a native sidecar with traffic capture, or wiring to the node proxy).",
        discussion: """
            Reads YAML (one or more documents; Pod, Deployment, StatefulSet, DaemonSet, ReplicaSet, \
            ReplicationController, Job, CronJob, and List) from --filename or stdin and writes it to stdout. \
            Sidecar mode adds an iptables init container (meshd-init: inbound TCP → 4143, outbound TCP → 4140, \
            NET_ADMIN), meshd as a native sidecar (an init container with restartPolicy: Always, probes /ready and \
            /live on 4191), and the meshd-config ConfigMap volume at /etc/meshd. Node mode adds NODE_IP (from \
            status.hostIP) and http_proxy=http://$(NODE_IP):4140 to every app container. The text is edited in \
            place: comments and unrelated lines are kept byte for byte, and injecting twice changes nothing. \
            hostNetwork pods are skipped (a message on stderr says so).
            """)

    @Option(name: [.short, .customLong("filename")], help: "Manifest file ('-' or none: stdin).") var filename: String?
    @Option(help: "sidecar or node.") var mode: ManifestInjector.Mode = .sidecar
    @Option(help: "meshd image.") var image: String = "meshd:latest"
    @Option(
        name: .customLong("init-image"),
        help: "Image of the iptables init container (runs `meshd capture install`: needs meshd and iptables; default: --image).")
    var initImage: String?
    @Option(name: .customLong("config-map"), help: "ConfigMap holding meshd.yaml, mounted at /etc/meshd.") var configMap: String =
        "meshd-config"
    @Option(name: .customLong("proxy-uid"), help: "User meshd runs as; its own traffic is not redirected.") var proxyUID: Int = 4140
    @Flag(name: [.short, .long], help: "Print only warnings (skipped pods) on stderr.") var quiet = false

    func run() async throws {
        let input: String
        do {
            if let filename, filename != "-" {
                input = try String(contentsOfFile: filename, encoding: .utf8)
            } else {
                input = String(decoding: FileHandle.standardInput.readDataToEndOfFile(), as: UTF8.self)
            }
        } catch {
            Self.stderr("meshctl inject: cannot read \(filename ?? "stdin"): \(error.localizedDescription)")
            throw ExitCode(2)
        }
        let injector = ManifestInjector(
            options: .init(mode: mode, image: image, initImage: initImage, configMap: configMap, proxyUID: proxyUID))
        let outcome: ManifestInjector.Outcome
        do {
            outcome = try injector.inject(input)
        } catch {
            Self.stderr("meshctl inject: \(error)")
            throw ExitCode(1)
        }
        for m in outcome.messages where !quiet || m.contains("skipped") || m.contains("not wired") { Self.stderr("meshctl inject: \(m)") }
        FileHandle.standardOutput.write(Data(outcome.text.utf8))
    }

    static func stderr(_ s: String) { FileHandle.standardError.write(Data((s + "\n").utf8)) }
}

extension ManifestInjector.Mode: ExpressibleByArgument {}
