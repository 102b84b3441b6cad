import Atomics
import Dispatch
import Logging
import MeshCore
import NIOConcurrencyHelpers
import NIOCore
import NIOExtras
import NIOHTTP1
import NIOPosix

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#elseif canImport(Darwin)
    import Darwin
#endif

/// Owns meshd's moving parts: the event loops and their contexts, the listeners, the admin server,
/// config reload and graceful drain.
final class MeshRuntime: Sendable {
    let group: MultiThreadedEventLoopGroup
    let shared: SharedRuntime
    let loops: [LoopContext]
    private let loopByID: [ObjectIdentifier: LoopContext]
    let configPath: String?
    let overrides: ConfigLoader.Overrides
    /// One per proxy listener: a helper tracks the connections of exactly one server channel.
    private let quiesce: [Direction: ServerQuiescingHelper]
    /// One per `protocol: tcp` service listener (bound at start).
    private let tcpQuiesce = NIOLockedValueBox<[ServerQuiescingHelper]>([])
    private let channels = NIOLockedValueBox<[String: Channel]>([:])
    private let reloadState = NIOLockedValueBox<(version: Int, lastText: String?, pendingText: String?)>((1, nil, nil))
    let shutdownRequested: @Sendable () -> Void
    private let publishLock = NIOLock()
    /// Where every reload and publish runs (admin, SIGHUP, the file watcher, discovery): a serial
    /// queue off the event loops, since they parse YAML, resolve host names (blocking) and wait for
    /// every loop to install the new snapshot.
    let control = DispatchQueue(label: "meshd.control")
    /// The configuration as written (before discovery substituted endpoint sets).
    private let baseConfig: NIOLockedValueBox<MeshConfig>
    let discovery: DiscoveryManager
    let startedAt = NIODeadline.now()

    init(
        config: MeshConfig, configText: String?, configPath: String?, overrides: ConfigLoader.Overrides,
        logger: Logger, metrics: MeshMetrics, shutdownRequested: @escaping @Sendable () -> Void
    ) throws(ConfigError) {
        let snapshot = try ResolvedSnapshot.resolve(config, version: 1)
        let threads = config.threads > 0 ? config.threads : System.coreCount
        self.group = MultiThreadedEventLoopGroup(numberOfThreads: threads)
        self.shared = SharedRuntime(metrics: metrics, logger: logger, snapshot: snapshot)
        var loops: [LoopContext] = []
        var seed = SplitMix64(seed: UInt64(truncatingIfNeeded: NIODeadline.now().uptimeNanoseconds))
        for (i, loop) in group.makeIterator().enumerated() {
            loops.append(LoopContext(eventLoop: loop, index: i, shared: shared, snapshot: snapshot, seed: seed.next()))
        }
        self.loops = loops
        self.loopByID = Dictionary(uniqueKeysWithValues: loops.map { (ObjectIdentifier($0.eventLoop), $0) })
        self.configPath = configPath
        self.overrides = overrides
        self.quiesce = [.outbound: ServerQuiescingHelper(group: group), .inbound: ServerQuiescingHelper(group: group)]
        self.shutdownRequested = shutdownRequested
        self.reloadState.withLockedValue { $0.lastText = configText }
        self.baseConfig = NIOLockedValueBox(config)
        self.discovery = DiscoveryManager(logger: logger, metrics: metrics)
        metrics.configVersion.record(1)
    }

    func loopContext(for loop: EventLoop) -> LoopContext { loopByID[ObjectIdentifier(loop)]! }

    var config: MeshConfig { shared.snapshot.config }

    /// Binds admin, outbound and inbound listeners; ready once all are bound.
    func start() async throws {
        shared.loops.withLockedValue { $0 = loops }
        for loop in loops { try await loop.eventLoop.submit { loop.start() }.get() }
        let config = self.config
        let admin = try await bindAdmin(config.admin.listen)
        channels.withLockedValue { $0["admin"] = admin }
        let outbound = try await bindProxy(.outbound, config.effectiveOutboundListen)
        channels.withLockedValue { $0["outbound"] = outbound }
        let inbound = try await bindProxy(.inbound, config.effectiveInboundListen)
        channels.withLockedValue { $0["inbound"] = inbound }
        try await bindTCPServices()
        listenersBound()
        discovery.runtime = self
        discovery.sync(with: config)
        if config.mode == .node && config.node.podCIDRs.isEmpty {
            shared.logger.warning(
                "\(NodeInboundPolicy.Refusal.noPodCIDRs.rawValue): every inbound request gets 403 until it names the node's pod CIDRs")
        }
        shared.ready.store(true, ordering: .relaxed)
        shared.metrics.ready.record(1)
        shared.logger.info(
            "meshd ready",
            metadata: [
                "outbound": "\(outbound.localAddress.map(Self.hostPort) ?? "?")",
                "inbound": "\(inbound.localAddress.map(Self.hostPort) ?? "?")",
                "admin": "\(admin.localAddress.map(Self.hostPort) ?? "?")",
                "threads": "\(loops.count)", "mode": "\(config.mode.rawValue)",
            ])
    }

    /// Every listener is bound: a node proxy's inbound policy learns their addresses (ports the kernel
    /// picked included), so it never forwards to meshd itself.
    private func listenersBound() {
        shared.boundListeners = boundAddresses().values.compactMap { a in
            guard let ip = a.ipAddress, let port = a.port else { return nil }
            return HostPort(host: ip, port: port)
        }
        for loop in loops { loop.eventLoop.execute { loop.refreshNodeInboundPolicy() } }
    }

    /// `127.0.0.1:4140` / `[::1]:4140`.
    static func hostPort(_ a: SocketAddress) -> String {
        let ip = a.ipAddress ?? "?"
        return ip.contains(":") ? "[\(ip)]:\(a.port ?? 0)" : "\(ip):\(a.port ?? 0)"
    }

    /// Bound addresses by listener name (`outbound`, `inbound`, `admin`).
    func boundAddresses() -> [String: SocketAddress] {
        channels.withLockedValue { $0.compactMapValues { $0.localAddress } }
    }

    private func bindProxy(_ direction: Direction, _ listen: HostPort) async throws -> Channel {
        let config = self.config
        let allowed: [CIDR]? = config.mode == .node && direction == .outbound ? config.effectiveAllowedSources : nil
        let shared = self.shared
        let openCount = direction == .outbound ? shared.outboundOpen : shared.inboundOpen
        let quiesce = self.quiesce[direction]!
        let runtime = self
        return try await ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 1024)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .serverChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(quiesce.makeServerChannelHandler(channel: channel))
                }
            }
            .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
            // A client may send its bytes and its FIN together (opaque TCP): keep the read side's EOF
            // as an event, not a close, so nothing it sent is lost.
            .childChannelOption(.allowRemoteHalfClosure, value: true)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    let loop = runtime.loopContext(for: channel.eventLoop)
                    let http = loop.snapshot.config.http
                    var limits = NIOHTTPDecoderLimitConfiguration()
                    limits.maxHeaderListSize = http.maxHeaderBytes
                    limits.maxHeaderFieldSize = http.maxHeaderBytes
                    let guardHandler = ConnectionGuard(
                        direction: direction, shared: shared, allowedSources: allowed, openCount: openCount,
                        maxConnections: http.maxConnections)
                    let sync = channel.pipeline.syncOperations
                    try sync.addHandler(guardHandler)
                    let proto = direction == .outbound ? loop.snapshot.config.outbound.protocol : loop.snapshot.config.inbound.protocol
                    func addHTTP() throws {
                        // An upgrade configuration without upgraders only makes the request decoder keep
                        // (not drop) the bytes after an Upgrade request; its handler leaves after the
                        // first request. meshd itself switches upgraded connections to a byte pipe.
                        try sync.configureHTTPServerPipeline(
                            withPipeliningAssistance: false, withServerUpgrade: ([], { _ in }), withErrorHandling: false,
                            withOutboundHeaderValidation: false, withEncoderConfiguration: .init(),
                            withDecoderLimitConfiguration: limits)
                        try sync.addHandler(HTTPProxyHandler(direction: direction, loop: loop, connectionGuard: guardHandler))
                    }
                    func addHTTP2() throws {
                        try HTTP2Downstream.configure(channel, direction: direction, loop: loop, connectionGuard: guardHandler)
                    }
                    func addTCP() throws {
                        try sync.addHandler(
                            TCPConnectHandler(
                                loop: loop, direction: direction, idleTimeout: loop.snapshot.config.upstream.idleTimeout,
                                resolve: { runtime.opaqueTarget(direction, channel: $0, loop: loop) }))
                    }
                    switch proto {
                    case .http1: try addHTTP()
                    case .http2, .grpc: try addHTTP2()
                    case .tcp: try addTCP()
                    case .detect:
                        // A connection that sends nothing is closed after the shorter of the detect and
                        // header-read timeouts (it has not started a request either).
                        let detectTimeout = min(http.detectTimeout, http.headerReadTimeout)
                        let detector = ProtocolDetector(
                            timeout: .nanoseconds(detectTimeout.nanoseconds),
                            onTimeout: {
                                shared.metrics.detected(direction, "timeout").increment()
                                shared.logger.info(
                                    "closing connection: protocol not detected in time",
                                    metadata: ["direction": "\(direction.label)", "timeout": "\(detectTimeout)"])
                            },
                            configure: { detected, _ in
                                shared.metrics.detected(direction, detected.rawValue).increment()
                                switch detected {
                                case .http1:
                                    try addHTTP()
                                case .http2:
                                    try addHTTP2()
                                case .http09:
                                    // No version: an HTTP/0.9 request gets 400 at once (not 408 after
                                    // waiting for a head that will never come).
                                    shared.metrics.error(.badRequest, direction).increment()
                                    guardHandler.writeRawAndClose(
                                        "HTTP/1.1 400 Bad Request\r\n\(MeshError.headerName): \(MeshError.badRequest.rawValue)\r\n"
                                            + "content-length: 0\r\nconnection: close\r\n\r\n")
                                case _ where direction == .outbound && guardHandler.originalDestination == nil:
                                    // An explicit (not redirected) outbound connection can only mean HTTP:
                                    // the HTTP path answers what it cannot parse with 400.
                                    shared.logger.info(
                                        "not HTTP on the explicit outbound listener (no original destination): answering as HTTP",
                                        metadata: ["protocol": "\(detected.rawValue)"])
                                    try addHTTP()
                                default:
                                    if detected == .opaque {
                                        shared.logger.info(
                                            "not HTTP: treating the connection as opaque TCP",
                                            metadata: ["direction": "\(direction.label)", "protocol": "\(detected.rawValue)"])
                                    }
                                    try addTCP()
                                }
                                return true
                            })
                        try sync.addHandler(detector)
                    }
                }
            }
            .bind(host: listen.host, port: listen.port)
            .get()
    }

    /// Where an opaque connection on a proxy listener goes: a sidecar's inbound → the application; an
    /// outbound connection redirected by iptables → its original destination (SO_ORIGINAL_DST).
    /// Otherwise nowhere (an explicit outbound connection that is not HTTP names no destination; a
    /// node proxy's inbound forwards only HTTP, which names the pod).
    func opaqueTarget(_ direction: Direction, channel: Channel, loop: LoopContext) -> EventLoopFuture<TCPTarget?> {
        let config = loop.snapshot.config
        switch direction {
        case .inbound:
            guard config.mode == .sidecar else { return channel.eventLoop.makeSucceededFuture(nil) }
            return channel.eventLoop.makeSucceededFuture(
                TCPTarget(address: loop.snapshot.appAddress, label: "app", connectTimeout: config.upstream.connectTimeout))
        case .outbound:
            return Self.originalDestination(channel).map { dst in
                dst.map { TCPTarget(address: $0, label: "original-dst", connectTimeout: config.upstream.connectTimeout) }
            }
        }
    }

    /// The destination an iptables REDIRECT rewrote (Linux SO_ORIGINAL_DST), or nil when the
    /// connection was not redirected (the original destination is the listener itself).
    static func originalDestination(_ channel: Channel) -> EventLoopFuture<SocketAddress?> {
        guard let provider = channel as? SocketOptionProvider, case .v4? = channel.localAddress else {
            return channel.eventLoop.makeSucceededFuture(nil)
        }
        let local = channel.localAddress
        let future: EventLoopFuture<sockaddr_in> = provider.unsafeGetSocketOption(
            level: SocketOptionLevel(IPPROTO_IP), name: SocketOptionName(80))  // SO_ORIGINAL_DST
        return future.map { raw -> SocketAddress? in
            let address = SocketAddress(raw, host: "")
            if address.ipAddress == local?.ipAddress && address.port == local?.port { return nil }
            return address
        }.recover { _ in nil }
    }

    /// Listeners of `protocol: tcp` services: each connection goes, as opaque TCP, to an endpoint
    /// picked by the service's balancer.
    private func bindTCPServices() async throws {
        for service in config.services where service.protocol == .tcp {
            guard let listen = service.listen else { continue }
            let name = service.name
            let runtime = self
            let shared = self.shared
            // Its own quiescing helper: a drain stops this listener accepting at once, like the others.
            let quiesce = ServerQuiescingHelper(group: group)
            tcpQuiesce.withLockedValue { $0.append(quiesce) }
            let channel = try await ServerBootstrap(group: group)
                .serverChannelOption(.backlog, value: 1024)
                .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
                .serverChannelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.addHandler(quiesce.makeServerChannelHandler(channel: channel))
                    }
                }
                .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
                .childChannelOption(.allowRemoteHalfClosure, value: true)
                .childChannelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        let loop = runtime.loopContext(for: channel.eventLoop)
                        let guardHandler = ConnectionGuard(
                            direction: .outbound, shared: shared,
                            allowedSources: loop.snapshot.config.mode == .node ? loop.snapshot.config.effectiveAllowedSources : nil,
                            openCount: shared.outboundOpen, maxConnections: loop.snapshot.config.http.maxConnections)
                        try channel.pipeline.syncOperations.addHandler(guardHandler)
                        let idle = loop.services.first { $0.name == name }?.idleTimeout ?? loop.snapshot.config.upstream.idleTimeout
                        try channel.pipeline.syncOperations.addHandler(
                            TCPConnectHandler(
                                loop: loop, direction: .outbound, idleTimeout: idle,
                                resolve: { ch in ch.eventLoop.makeSucceededFuture(loop.tcpTarget(service: name)) }))
                    }
                }
                .bind(host: listen.host, port: listen.port)
                .get()
            channels.withLockedValue { $0["tcp:" + name] = channel }
            shared.logger.info(
                "tcp service listening", metadata: ["service": "\(name)", "listen": "\(channel.localAddress.map(Self.hostPort) ?? "?")"])
        }
    }

    private func bindAdmin(_ listen: HostPort) async throws -> Channel {
        let runtime = self
        let open = ManagedAtomic<Int>(0)
        let refused = shared.metrics.counter("meshd_connections_refused_total", [("direction", "admin"), ("reason", "connection_limit")])
        return try await ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 64)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    let sync = channel.pipeline.syncOperations
                    try sync.addHandler(AdminConnectionLimit(open: open, refused: refused))
                    try sync.addHandler(IdleStateHandler(readTimeout: AdminLimits.idleTimeout))
                    try sync.configureHTTPServerPipeline()
                    try sync.addHandler(AdminHandler(runtime: runtime))
                }
            }
            .bind(host: listen.host, port: listen.port)
            .get()
    }

    // MARK: - Reload

    enum ReloadOutcome: Equatable {
        case applied(version: Int)
        case unchanged
        /// The file changed since the last read: it is applied once a second read agrees.
        case settling
        case rejected(String)
    }

    /// `reload` on the control queue, for async callers (SIGHUP, the file watcher).
    @discardableResult
    func reloadOffLoop(force: Bool, reason: String) async -> ReloadOutcome {
        await withCheckedContinuation { continuation in
            control.async { continuation.resume(returning: self.reload(force: force, reason: reason)) }
        }
    }

    /// Reads the config file again; applies it if valid, otherwise keeps the running config.
    /// `force` re-applies even when the text did not change (SIGHUP). Runs on the control queue only.
    @discardableResult
    func reload(force: Bool, reason: String) -> ReloadOutcome {
        dispatchPrecondition(condition: .onQueue(control))
        guard let path = configPath else { return .unchanged }
        let text: String
        do {
            text = try readFile(path)
        } catch {
            if force {
                shared.metrics.reloadsFailed.increment()
                shared.logger.error("config reload failed: cannot read file", metadata: ["path": "\(path)", "error": "\(error)"])
                return .rejected("cannot read \(path): \(error)")
            }
            return .unchanged  // a ConfigMap swap in progress; try again next tick
        }
        let previous = reloadState.withLockedValue { $0.lastText }
        if !force && text == previous { return .unchanged }
        if !force {
            // Debounce: a changed file is applied once two reads (`settleDelay` apart) agree, so a
            // writer that is not atomic (or an editor mid-save) is never caught half-way.
            let settled = reloadState.withLockedValue { state -> Bool in
                if state.pendingText == text { return true }
                state.pendingText = text
                return false
            }
            if !settled { return .settling }
        }
        reloadState.withLockedValue { $0.lastText = text }
        if text.allSatisfy({ $0 == " " || $0 == "\n" || $0 == "\t" || $0 == "\r" }) {
            // An empty file is a truncated write, never "no routes": the running config keeps serving.
            shared.metrics.reloadsFailed.increment()
            shared.logger.error(
                "config reload rejected: the file is empty; the running config keeps serving", metadata: ["path": "\(path)"])
            return .rejected("\(path) is empty")
        }
        let old = config
        var new: MeshConfig
        do {
            new = try ConfigLoader.load(yaml: text, overrides: overrides)
        } catch {
            shared.metrics.reloadsFailed.increment()
            shared.logger.error(
                "config reload rejected; the running config keeps serving",
                metadata: ["path": "\(path)", "reason": "\(reason)", "problems": "\(error.description)"])
            return .rejected(error.description)
        }
        // Listeners and threads are fixed for the life of the process.
        var needsRestart: [String] = []
        if new.mode != old.mode { needsRestart.append("mode") }
        if new.effectiveOutboundListen != old.effectiveOutboundListen { needsRestart.append("outbound.listen") }
        if new.effectiveInboundListen != old.effectiveInboundListen { needsRestart.append("inbound.listen") }
        if new.admin != old.admin { needsRestart.append("admin.listen") }
        if new.threads != old.threads { needsRestart.append("threads") }
        if new.node.allowedSources != old.node.allowedSources || new.node.podCIDRs != old.node.podCIDRs {
            needsRestart.append("node")
        }
        if !needsRestart.isEmpty {
            shared.logger.warning(
                "config keys that only apply at start changed; restart meshd to apply them",
                metadata: ["keys": "\(needsRestart.joined(separator: ", "))"])
            new.mode = old.mode
            new.nodeIP = old.nodeIP
            new.outbound = old.outbound
            new.inbound.listen = old.inbound.listen
            new.admin = old.admin
            new.threads = old.threads
            new.node = old.node
        }
        let version: Int
        do {
            version = try publish(base: new)
        } catch {
            shared.metrics.reloadsFailed.increment()
            shared.logger.error("config reload rejected", metadata: ["problems": "\(error.description)"])
            return .rejected(error.description)
        }
        discovery.sync(with: new)
        shared.metrics.reloadsOK.increment()
        shared.logger.info(
            "config reloaded",
            metadata: [
                "version": "\(version)", "reason": "\(reason)", "services": "\(new.services.count)", "routes": "\(new.routes.count)",
            ])
        return .applied(version: version)
    }

    // MARK: - Publishing snapshots

    /// Builds and installs a snapshot from `base` (the configuration as written) with the endpoint
    /// sets discovery has found substituted; returns its version once every loop has installed it.
    /// Runs on the control queue (never on an event loop: it resolves names and waits for the loops).
    @discardableResult
    func publish(base: MeshConfig) throws(ConfigError) -> Int {
        dispatchPrecondition(condition: .onQueue(control))
        let result: Result<Int, ConfigError> = publishLock.withLock {
            var effective = base
            let found = discovery.endpointSets()
            for i in effective.services.indices where effective.services[i].discovery != nil {
                if let set = found[effective.services[i].name] { effective.services[i].endpoints = set }
            }
            let version = reloadState.withLockedValue { state -> Int in
                state.version += 1
                return state.version
            }
            let snapshot: ResolvedSnapshot
            do throws(ConfigError) {
                snapshot = try ResolvedSnapshot.resolve(effective, version: version, previous: shared.snapshot)
            } catch {
                return .failure(error)
            }
            baseConfig.withLockedValue { $0 = base }
            shared.snapshot = snapshot
            // Published once every loop has it (so "config reloaded" is true when it is logged).
            let installed = loops.map { loop in loop.eventLoop.submit { loop.install(snapshot) } }
            try? EventLoopFuture.andAllSucceed(installed, on: group.any()).wait()
            shared.metrics.configVersion.record(version)
            return .success(version)
        }
        return try result.get()
    }

    /// Discovery found a new endpoint set: republish with the current base configuration (on the
    /// control queue, after any reload in progress).
    func discoveryChangedOffLoop(service: String) async throws(ConfigError) -> Int {
        let result: Result<Int, ConfigError> = await withCheckedContinuation { continuation in
            control.async {
                do throws(ConfigError) {
                    continuation.resume(returning: .success(try self.publish(base: self.baseConfig.withLockedValue { $0 })))
                } catch {
                    continuation.resume(returning: .failure(error))
                }
            }
        }
        return try result.get()
    }

    // MARK: - Drain

    /// Stops accepting, lets in-flight requests finish (up to `drainTimeout`), then stops the loops.
    func drainAndStop() async {
        discovery.stopAll()
        shared.ready.store(false, ordering: .relaxed)
        shared.metrics.ready.record(0)
        let timeout = config.drainTimeout
        shared.logger.info("draining: listeners closed, waiting for in-flight requests", metadata: ["drainTimeout": "\(timeout)"])
        let promise = group.next().makePromise(of: Void.self)
        let helpers = Array(quiesce.values) + tcpQuiesce.withLockedValue { $0 }
        let perListener = helpers.map { helper in
            let p = group.next().makePromise(of: Void.self)
            helper.initiateShutdown(promise: p)
            return p.futureResult
        }
        EventLoopFuture.andAllComplete(perListener, on: group.next()).cascade(to: promise)
        let drained = ManagedAtomic<Bool>(false)
        let timer = group.next().scheduleTask(in: .nanoseconds(timeout.nanoseconds)) {
            if !drained.load(ordering: .relaxed) {
                promise.succeed(())
            }
        }
        promise.futureResult.whenComplete { _ in drained.store(true, ordering: .relaxed) }
        try? await promise.futureResult.get()
        timer.cancel()
        let open = shared.outboundOpen.load(ordering: .relaxed) + shared.inboundOpen.load(ordering: .relaxed)
        if open > 0 {
            shared.logger.warning("drain timeout reached; closing remaining connections", metadata: ["open": "\(open)"])
        }
        if let admin = channels.withLockedValue({ $0["admin"] }) { try? await admin.close() }
        for loop in loops { try? await loop.eventLoop.submit { loop.stop() }.get() }
        shared.accessLogWriter.drain()
        try? await group.shutdownGracefully()
        shared.logger.info("meshd stopped")
    }

    // MARK: - Admin API

    typealias AdminReply = (HTTPResponseStatus, String, String)

    /// Answers one admin request; the future completes on `loop` (the admin connection's loop).
    func handleAdmin(on loop: EventLoop, method: HTTPMethod, uri: String, body: String, remote: SocketAddress?)
        -> EventLoopFuture<AdminReply>
    {
        let path = String(uri.prefix { $0 != "?" })
        let json = "application/json"
        func ok(_ v: JSONValue) -> EventLoopFuture<AdminReply> {
            loop.makeSucceededFuture((.ok, json, v.rendered(pretty: true) + "\n"))
        }
        switch (method, path) {
        case (.GET, "/live"):
            return loop.makeSucceededFuture((.ok, "text/plain", "live\n"))
        case (.GET, "/ready"):
            let ready = shared.ready.load(ordering: .relaxed)
            return loop.makeSucceededFuture((ready ? .ok : .serviceUnavailable, "text/plain", ready ? "ready\n" : "not ready\n"))
        case (.GET, "/config"):
            var c = config.json
            if case .object(var pairs) = c {
                pairs.insert(("version", .int(Int64(shared.snapshot.mesh.version))), at: 0)
                c = .object(pairs)
            }
            return ok(c)
        case (.GET, "/routes"):
            return ok(routesJSON())
        case (.GET, "/services"):
            return collectReports(on: loop).map { reports in
                (.ok, json, self.servicesJSON(reports).rendered(pretty: true) + "\n")
            }
        case (.GET, "/metrics"):
            return collectReports(on: loop).map { reports in
                (.ok, "text/plain; version=0.0.4", self.metricsText(reports))
            }
        case (.GET, "/log-level"):
            return loop.makeSucceededFuture((.ok, "text/plain", "\(LogLevelBox.shared.level.rawValue)\n"))
        case (.PUT, "/log-level"), (.POST, "/log-level"):
            guard let level = Logger.Level(rawValue: body.trimmingCharacters(in: " \n\r\t")) else {
                return loop.makeSucceededFuture(
                    (.badRequest, "text/plain", "expected one of: trace debug info notice warning error critical\n"))
            }
            LogLevelBox.shared.level = level
            return loop.makeSucceededFuture((.ok, "text/plain", "\(level.rawValue)\n"))
        case (.POST, "/shutdown"):
            guard let ip = remote?.ipAddress.flatMap({ IPAddress($0) }), ip.isLoopback else {
                return loop.makeSucceededFuture((.forbidden, "text/plain", "shutdown is allowed from loopback only\n"))
            }
            shared.logger.info("shutdown requested through the admin API")
            shutdownRequested()
            return loop.makeSucceededFuture((.ok, "text/plain", "shutting down\n"))
        case (.POST, "/reload"):
            // Parsing, resolving and installing run on the control queue; this loop only waits.
            let promise = loop.makePromise(of: AdminReply.self)
            control.async {
                switch self.reload(force: true, reason: "admin") {
                case .applied(let v): promise.succeed((.ok, "text/plain", "applied version \(v)\n"))
                case .unchanged, .settling: promise.succeed((.ok, "text/plain", "no config file; nothing to reload\n"))
                case .rejected(let why): promise.succeed((.badRequest, "text/plain", why + "\n"))
                }
            }
            return promise.futureResult
        default:
            return loop.makeSucceededFuture(
                (.notFound, "text/plain", "not found; try /live /ready /metrics /config /routes /services /log-level\n"))
        }
    }

    private func collectReports(on loop: EventLoop) -> EventLoopFuture<[LoopReport]> {
        let futures = loops.map { ctx in ctx.eventLoop.submit { ctx.report() } }
        return EventLoopFuture.whenAllSucceed(futures, on: loop)
    }

    func routesJSON() -> JSONValue {
        let snapshot = shared.snapshot
        let routes = snapshot.mesh.routes.routes.map { r -> JSONValue in
            let cfg = snapshot.config.routes[r.index]
            var match: [(String, JSONValue)] = [("authority", .string(cfg.match.authority ?? "*"))]
            match.append(("pathPrefix", .string(cfg.match.pathPrefix ?? "/")))
            if let m = cfg.match.method { match.append(("method", .string(m))) }
            if !cfg.match.headers.isEmpty { match.append(("headers", .object(cfg.match.headers.map { ($0.name, .string($0.value)) }))) }
            return .object([
                ("name", .string(r.name)),
                ("match", .object(match)),
                (
                    "backends",
                    .array(
                        cfg.backends.map {
                            .object([("service", .string($0.service)), ("weight", .int(Int64($0.weight)))])
                        })
                ),
                ("timeout", .string(r.timeout.description)),
            ])
        }
        return .object([("version", .int(Int64(snapshot.mesh.version))), ("routes", .array(routes))])
    }

    func servicesJSON(_ reports: [LoopReport]) -> JSONValue {
        let snapshot = shared.snapshot
        let services = snapshot.mesh.services.map { s -> JSONValue in
            var latency = LatencyHistogram()
            var inFlight: [String: Int] = [:]
            var requests: [String: UInt64] = [:]
            var ewma: [String: (sum: Double, n: Int)] = [:]
            var healthy: [String: Bool] = [:]
            var eligible: [String: Bool] = [:]
            var ejectedUntil: [String: Int64] = [:]
            for r in reports {
                guard let rs = r.services.first(where: { $0.name == s.name }) else { continue }
                latency.merge(rs.latency)
                for e in rs.endpoints {
                    inFlight[e.address, default: 0] += e.inFlight
                    requests[e.address, default: 0] += e.requests
                    if let v = e.ewmaNanos {
                        ewma[e.address, default: (0, 0)] = (
                            ewma[e.address, default: (0, 0)].sum + v, ewma[e.address, default: (0, 0)].n + 1
                        )
                    }
                    healthy[e.address] = (healthy[e.address] ?? true) && e.healthy
                    eligible[e.address] = (eligible[e.address] ?? false) || e.eligible
                    if let u = e.ejectedUntil { ejectedUntil[e.address] = max(ejectedUntil[e.address] ?? 0, u) }
                }
            }
            let endpoints = s.endpoints.map { e -> JSONValue in
                let a = e.address.description
                var pairs: [(String, JSONValue)] = [("address", .string(a))]
                if let via = e.via { pairs.append(("via", .string(via.description))) }
                if let z = e.zone { pairs.append(("zone", .string(z))) }
                if let n = e.node { pairs.append(("node", .string(n))) }
                let state = healthy[a] == false ? "ejected" : (eligible[a] == false ? "standby" : "healthy")
                if let until = ejectedUntil[a] {
                    let remaining = Double(until - Int64(NIODeadline.now().uptimeNanoseconds)) / 1e9
                    pairs.append(("returnsInSeconds", .double((max(0, remaining) * 10).rounded() / 10)))
                }
                let ewmaMs: JSONValue = ewma[a].map { .double(($0.sum / Double($0.n)) / 1e6) } ?? .null
                pairs += [
                    ("weight", .int(Int64(e.weight))), ("state", .string(state)),
                    ("inFlight", .int(Int64(inFlight[a] ?? 0))), ("requests", .int(Int64(requests[a] ?? 0))),
                    ("latencyEwmaMs", ewmaMs),
                ]
                return .object(pairs)
            }
            return .object([
                ("name", .string(s.name)), ("balancer", .string(s.balancer.algorithm.rawValue)),
                ("requests", .int(Int64(latency.count))),
                ("latencyP50Ms", latency.quantile(0.5).map { .double($0 * 1000) } ?? .null),
                ("latencyP99Ms", latency.quantile(0.99).map { .double($0 * 1000) } ?? .null),
                ("endpoints", .array(endpoints)),
            ])
        }
        return .object([("version", .int(Int64(snapshot.mesh.version))), ("services", .array(services))])
    }

    func metricsText(_ reports: [LoopReport]) -> String {
        var out = shared.metrics.registry.emitToString()
        out += ServiceMetrics.render(shared.snapshot.services.map(\.metrics) + [shared.inboundMetrics])
        // Per-loop latency histograms, merged.
        var byService: [(String, String, LatencyHistogram)] = []
        var outboundMerged: [String: LatencyHistogram] = [:]
        var inbound = LatencyHistogram()
        for r in reports {
            for s in r.services { outboundMerged[s.name, default: LatencyHistogram()].merge(s.latency) }
            inbound.merge(r.inboundLatency)
        }
        for name in outboundMerged.keys.sorted() { byService.append(("outbound", name, outboundMerged[name]!)) }
        byService.append(("inbound", "local", inbound))
        out += "# HELP meshd_request_duration_seconds Time from request head to response end.\n"
        out += "# TYPE meshd_request_duration_seconds histogram\n"
        for (direction, service, h) in byService {
            let labels = "direction=\"\(direction)\",service=\"\(service)\""
            let cumulative = h.cumulative
            for (i, bound) in LatencyHistogram.bounds.enumerated() {
                out += "meshd_request_duration_seconds_bucket{\(labels),le=\"\(bound)\"} \(cumulative[i])\n"
            }
            out += "meshd_request_duration_seconds_bucket{\(labels),le=\"+Inf\"} \(h.count)\n"
            out += "meshd_request_duration_seconds_sum{\(labels)} \(Double(h.sumNanos) / 1e9)\n"
            out += "meshd_request_duration_seconds_count{\(labels)} \(h.count)\n"
        }
        let idle = reports.reduce(0) { $0 + $1.upstreamIdle }
        out += "# TYPE meshd_upstream_pool_idle gauge\nmeshd_upstream_pool_idle \(idle)\n"
        let p = ProcessStats.read()
        out += "# TYPE process_resident_memory_bytes gauge\nprocess_resident_memory_bytes \(p.rssBytes)\n"
        out += "# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total \(p.cpuSeconds)\n"
        out += "# TYPE process_open_fds gauge\nprocess_open_fds \(p.openFDs)\n"
        out += "# TYPE meshd_uptime_seconds gauge\nmeshd_uptime_seconds \(Double((NIODeadline.now() - startedAt).nanoseconds) / 1e9)\n"
        return out
    }
}

/// Resident memory and CPU time of this process, from /proc.
enum ProcessStats {
    struct Sample {
        var rssBytes: Int = 0
        var cpuSeconds: Double = 0
        var openFDs: Int = 0
    }

    static func read() -> Sample {
        var s = Sample()
        if let statm = try? readFile("/proc/self/statm") {
            let fields = statm.split(separator: " ")
            if fields.count > 1, let pages = Int(fields[1]) { s.rssBytes = pages * Int(sysconf(Int32(_SC_PAGESIZE))) }
        }
        var usage = rusage()
        if getrusage(RUSAGE_SELF_WHO, &usage) == 0 {
            s.cpuSeconds =
                Double(usage.ru_utime.tv_sec) + Double(usage.ru_utime.tv_usec) / 1e6 + Double(usage.ru_stime.tv_sec)
                + Double(usage.ru_stime.tv_usec) / 1e6
        }
        if let dir = opendir("/proc/self/fd") {
            while readdir(dir) != nil { s.openFDs += 1 }
            closedir(dir)
            s.openFDs = max(0, s.openFDs - 3)  // ., .. and the directory itself
        }
        return s
    }
}

struct FileReadError: Error, CustomStringConvertible {
    var path: String
    var errno: Int32
    var detail: String?
    var description: String { "\(path): \(detail ?? String(cString: strerror(errno)))" }
}

/// Reads a whole (small) file, off the event loops: config files and /proc. A config file's text: a regular file (or a symlink to one) of at most 16 MiB. Opened without
/// blocking, so a FIFO or device named by mistake is refused instead of waiting forever.
func readFile(_ path: String) throws -> String {
    let fd = open(path, O_RDONLY | O_NONBLOCK)
    guard fd >= 0 else { throw FileReadError(path: path, errno: errno) }
    defer { close(fd) }
    var info = stat()
    guard fstat(fd, &info) == 0 else { throw FileReadError(path: path, errno: errno) }
    guard info.st_mode & S_IFMT == S_IFREG else { throw FileReadError(path: path, errno: EINVAL, detail: "not a regular file") }
    var bytes: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 65536)
    while true {
        let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, 65536) }
        if n < 0 { throw FileReadError(path: path, errno: errno) }
        if n == 0 { break }
        bytes.append(contentsOf: chunk[0..<n])
        if bytes.count > 16 << 20 { throw FileReadError(path: path, errno: EFBIG) }
    }
    return String(decoding: bytes, as: UTF8.self)
}

extension String {
    func trimmingCharacters(in set: String) -> String {
        var s = Substring(self)
        while let f = s.first, set.contains(f) { s = s.dropFirst() }
        while let l = s.last, set.contains(l) { s = s.dropLast() }
        return String(s)
    }
}

#if canImport(Glibc)
    let RUSAGE_SELF_WHO = __rusage_who_t(RUSAGE_SELF.rawValue)
#else
    let RUSAGE_SELF_WHO = RUSAGE_SELF
#endif
