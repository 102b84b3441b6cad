import ArgumentParser
import Logging
import MeshCore
import NIOConcurrencyHelpers
import ServiceLifecycle
import UnixSignals

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#elseif canImport(Darwin)
    import Darwin
#endif

/// The `meshd` command (the executable's `main.swift` runs it).
public struct Meshd: AsyncParsableCommand {
    public init() {}

    public static let configuration = CommandConfiguration(
        commandName: "meshd",
        abstract: "meshd: a service-mesh data-plane proxy (sidecar or per-node).",
        discussion: """
            With no --config, meshd starts as a sidecar with the built-in default: outbound \
            127.0.0.1:4140, inbound 0.0.0.0:4143 → 127.0.0.1:8080, admin 127.0.0.1:4191. \
            MESHD_MODE, MESHD_NODE_IP and MESHD_APP_PORT override the per-pod values; flags override those.
            `meshd capture install|remove` writes the iptables rules of transparent capture (see `meshd capture --help`).
            """)

    /// The entry point: `meshd capture …` is a command of its own (its `--mode` is not meshd's).
    public static func start() async {
        let arguments = Array(CommandLine.arguments.dropFirst())
        if arguments.first == "capture" {
            CaptureCommand.main(Array(arguments.dropFirst()))
        } else {
            await main(arguments)
        }
    }

    @Option(name: .long, help: "Configuration file (YAML or JSON). Reloaded on SIGHUP and when it changes.")
    var config: String?

    @Option(name: .long, help: "Placement: sidecar or node (overrides MESHD_MODE and the file).")
    var mode: String?

    @Option(name: .customLong("node-ip"), help: "Node mode: the host IP to bind (overrides MESHD_NODE_IP).")
    var nodeIP: String?

    @Option(name: .long, help: "Number of event loops (0 = one per core).")
    var threads: Int?

    @Option(name: .customLong("log-level"), help: "trace, debug, info, notice, warning, error or critical.")
    var logLevel: String = "info"

    @Flag(name: .long, help: "Validate the configuration and exit (0 when valid).")
    var check = false

    @Flag(
        name: .long,
        help: "Start on the listening sockets of the meshd at upgrade.socket (it then drains and exits); binds new ones when none runs.")
    var takeover = false

    public func run() async throws {
        guard let level = Logger.Level(rawValue: logLevel) else {
            throw ValidationError("--log-level must be one of trace, debug, info, notice, warning, error, critical")
        }
        LogLevelBox.shared.level = level
        LoggingSystem.bootstrap { JSONLogHandler(label: $0) }
        let logger = Logger(label: "meshd")

        var env: [String: String] = [:]
        for key in ["MESHD_MODE", "MESHD_NODE_IP", "MESHD_APP_PORT", "MESHD_ZONE", "MESHD_NODE_NAME"] {
            if let v = getenv(key) { env[key] = String(cString: v) }
        }
        let overrides = ConfigLoader.Overrides.environment(env)
            .merging(ConfigLoader.Overrides(mode: mode, nodeIP: nodeIP, threads: threads))

        let meshConfig: MeshConfig
        var configText: String?
        do {
            if let path = config {
                let text: String
                do { text = try readFile(path) } catch {
                    throw ConfigError(problems: [ConfigProblem(path: "", reason: .invalid("cannot read \(path): \(error)"))])
                }
                configText = text
                meshConfig = try ConfigLoader.load(yaml: text, overrides: overrides)
                if !check {
                    logger.info("starting with config file", metadata: ["path": "\(path)", "mode": "\(meshConfig.mode.rawValue)"])
                }
            } else {
                meshConfig = try ConfigLoader.builtInDefault(overrides: overrides)
                if !check {
                    logger.info(
                        "no --config given: starting with the built-in sidecar default",
                        metadata: [
                            "outbound": "\(meshConfig.effectiveOutboundListen)",
                            "inbound": "\(meshConfig.effectiveInboundListen) -> \(meshConfig.inbound.app)",
                            "admin": "\(meshConfig.admin.listen)", "mode": "\(meshConfig.mode.rawValue)",
                        ])
                }
            }
        } catch let error as ConfigError {
            printErr("meshd: invalid configuration\(config.map { " in \($0)" } ?? ""):\n\(error.description)\n")
            throw ExitCode(2)
        }
        if check {
            // The same resolution a start does: a host name that does not resolve is an error here too.
            do { _ = try ResolvedSnapshot.resolve(meshConfig, version: 1) } catch {
                printErr("meshd: invalid configuration\(config.map { " in \($0)" } ?? ""):\n\(error.description)\n")
                throw ExitCode(2)
            }
            print("configuration is valid: \(meshConfig.services.count) services, \(meshConfig.routes.count) routes")
            return
        }

        if takeover && meshConfig.upgrade.socket == nil {
            printErr("meshd: --takeover needs upgrade.socket in the configuration\n")
            throw ExitCode(2)
        }
        let metrics = MeshMetrics(bootstrapGlobal: true)
        let groupBox = NIOLockedValueBox<ServiceGroup?>(nil)
        let runtime: MeshRuntime
        do {
            runtime = try MeshRuntime(
                config: meshConfig, configText: configText, configPath: config, overrides: overrides, logger: logger,
                metrics: metrics, takeover: takeover,
                shutdownRequested: {
                    Task { await groupBox.withLockedValue { $0 }?.triggerGracefulShutdown() }
                })
        } catch {
            printErr("meshd: invalid configuration:\n\(error.description)\n")
            throw ExitCode(2)
        }
        let service = MeshdService(runtime: runtime, logger: logger)
        let group = ServiceGroup(
            configuration: .init(
                services: [.init(service: service)],
                gracefulShutdownSignals: [.sigterm, .sigint],
                logger: logger))
        groupBox.withLockedValue { $0 = group }
        do {
            try await group.run()
        } catch {
            logger.error("meshd failed", metadata: ["error": "\(error)"])
            throw ExitCode(1)
        }
        if runtime.handoverServer.withLockedValue({ $0 })?.handedOver.load(ordering: .relaxed) == true
            && meshConfig.upgrade.afterHandover == .wait
        {
            // `upgrade.afterHandover: wait`: the successor serves; this process holds no listener and
            // waits to be told to stop (a container that exited would be restarted).
            logger.notice("handed over and drained; waiting for SIGTERM (upgrade.afterHandover: wait)")
            for await _ in await UnixSignalsSequence(trapping: .sigterm, .sigint) { break }
        }
        // Everything is drained and the event loops are stopped. Exit here rather than tearing the
        // runtime down: NIO objects released after their loops stopped would try to schedule work.
        withExtendedLifetime(runtime) { processExit(0) }
    }
}

/// Runs meshd under swift-service-lifecycle: start, watch the config, drain on shutdown.
struct MeshdService: Service {
    let runtime: MeshRuntime
    let logger: Logger

    func run() async throws {
        do {
            try await runtime.start()
        } catch {
            logger.error("cannot start listeners", metadata: ["error": "\(error)"])
            await runtime.drainAndStop()
            throw error
        }
        let runtime = self.runtime
        let hup = Task {
            for await _ in await UnixSignalsSequence(trapping: .sighup) {
                await runtime.reloadOffLoop(force: true, reason: "SIGHUP")
            }
        }
        // SIGUSR1: log rotation moved the access-log file away; write to a new one at its path.
        let usr1 = Task {
            for await _ in await UnixSignalsSequence(trapping: .sigusr1) {
                do {
                    try runtime.shared.accessLogWriter.reopen()
                    logger.info("access log reopened (SIGUSR1)")
                } catch {
                    logger.error("cannot reopen the access log", metadata: ["problem": "\(error)"])
                }
            }
        }
        // The file is re-read every second: this also catches the atomic `..data` symlink swap of a
        // Kubernetes ConfigMap volume, which no inotify watch on the file itself would see. A change
        // is applied when a read 250 ms later finds the same text (never a half-written file).
        let watcher = Task {
            var delay = Duration.seconds(1)
            while !Task.isCancelled {
                try? await Task.sleep(for: delay)
                if Task.isCancelled { break }
                let outcome = await runtime.reloadOffLoop(force: false, reason: "file changed")
                delay = outcome == .settling ? .milliseconds(250) : .seconds(1)
            }
        }
        try? await gracefulShutdown()
        hup.cancel()
        usr1.cancel()
        watcher.cancel()
        await runtime.drainAndStop()
    }
}

func printErr(_ s: String) {
    writeStderr(s)
}

/// `exit(3)`: flushes stdio and ends the process.
func processExit(_ code: Int32) -> Never {
    exit(code)
}
