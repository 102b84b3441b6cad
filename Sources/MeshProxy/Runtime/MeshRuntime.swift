import Atomics
import CMeshSystem
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
    let loopByID: [ObjectIdentifier: LoopContext]
    let configPath: String?
    let overrides: ConfigLoader.Overrides
    /// One per proxy listener: a helper tracks the connections of exactly one server channel.
    let quiesce: [Direction: ServerQuiescingHelper]
    /// One per `protocol: tcp` service listener (bound at start).
    let tcpQuiesce = NIOLockedValueBox<[ServerQuiescingHelper]>([])
    let channels = NIOLockedValueBox<[String: Channel]>([:])
    let reloadState = NIOLockedValueBox<(version: Int, lastText: String?, pendingText: String?)>((1, nil, nil))
    let shutdownRequested: @Sendable () -> Void
    let publishLock = NIOLock()
    /// Where every reload and publish runs (admin, SIGHUP, the file watcher, discovery): a serial
    /// queue off the event loops, since they parse YAML, resolve host names (blocking) and wait for
    /// every loop to install the new snapshot.
    let control = DispatchQueue(label: "meshd.control")
    /// The configuration as written (before discovery substituted endpoint sets).
    let baseConfig: NIOLockedValueBox<MeshConfig>
    let discovery: DiscoveryManager
    let startedAt = NIODeadline.now()
    /// The identity files and material in force (see `MeshRuntime+Identity`).
    let identityState = NIOLockedValueBox(IdentityState())
    /// Which source pods have a label in `meshd_source_requests_total` (touched by `/metrics` only).
    let sourceLabeler: NIOLockedValueBox<SourceLabeler>
    /// Set when draining starts: background watchers stop.
    let stopping = ManagedAtomic<Bool>(false)
    /// `--takeover`: start on the listening sockets of the meshd at `upgrade.socket`.
    let takeover: Bool
    /// The descriptor of every listener, by name (`admin`, `outbound`, `inbound`, `tcp:SERVICE`), in
    /// the order they were bound: what a successor gets.
    let listenerFDs = NIOLockedValueBox<[(name: String, fd: CInt)]>([])
    /// Sockets a predecessor handed over and not yet adopted.
    let inherited = NIOLockedValueBox<[String: CInt]>([:])
    /// Listens on `upgrade.socket` once meshd is ready.
    let handoverServer = NIOLockedValueBox<HandoverServer?>(nil)

    init(
        config: MeshConfig, configText: String?, configPath: String?, overrides: ConfigLoader.Overrides,
        logger: Logger, metrics: MeshMetrics, takeover: Bool = false, shutdownRequested: @escaping @Sendable () -> Void
    ) throws(ConfigError) {
        self.takeover = takeover
        let snapshot = try ResolvedSnapshot.resolve(config, version: 1)
        let threads = config.threads > 0 ? config.threads : System.coreCount
        self.group = MultiThreadedEventLoopGroup(numberOfThreads: threads)
        self.shared = SharedRuntime(metrics: metrics, logger: logger, snapshot: snapshot)
        self.sourceLabeler = NIOLockedValueBox(SourceLabeler(slots: config.node.sourceMetrics))
        _ = ProcessStats.startTime  // taken now, at start
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
        try await loadIdentityAtStart()
        watchIdentity()
        if let path = config.accessLogOptions.path { try shared.accessLogWriter.use(path: path) }
        let config = self.config
        var predecessor: HandoverConnection?
        if takeover, let path = config.upgrade.socket {
            let logger = shared.logger
            if let (connection, offered) = try await Self.offLoop({ try HandoverClient.request(path: path, logger: logger) }) {
                predecessor = connection
                inherited.withLockedValue { $0 = offered }
                logger.info(
                    "--takeover: received the running meshd's listeners",
                    metadata: ["listeners": "\(offered.keys.sorted().joined(separator: " "))"])
            }
        }
        let admin = try await bindAdmin(config.admin.listen)
        channels.withLockedValue { $0["admin"] = admin }
        let outbound = try await bindProxy(.outbound, config.effectiveOutboundListen)
        channels.withLockedValue { $0["outbound"] = outbound }
        let inbound = try await bindProxy(.inbound, config.effectiveInboundListen)
        channels.withLockedValue { $0["inbound"] = inbound }
        try await bindTCPServices()
        // Sockets handed over for listeners this configuration no longer has.
        let unused: [String: CInt] = inherited.withLockedValue { state in
            let left = state
            state = [:]
            return left
        }
        for (name, fd) in unused {
            shared.logger.notice(
                "--takeover: the running meshd's listener is not in this configuration; closing it", metadata: ["listener": "\(name)"])
            _ = Glibc.close(fd)
        }
        listenersBound()
        discovery.runtime = self
        discovery.sync(with: config)
        if config.mode == .node && config.node.podCIDRs.isEmpty {
            shared.logger.warning(
                "\(NodeInboundPolicy.Refusal.noPodCIDRs.rawValue): every inbound request gets 403 until it names the node's pod CIDRs")
        }
        shared.ready.store(true, ordering: .relaxed)
        shared.metrics.ready.record(1)
        if let predecessor {
            // Ready on the same sockets: now the running meshd stops accepting and drains.
            do {
                try await Self.offLoop { try HandoverClient.confirmReady(predecessor) }
                handoverCounted("taken_over")
                shared.logger.notice("--takeover: the previous meshd stopped accepting; this one serves alone")
            } catch {
                shared.logger.error(
                    "--takeover: the previous meshd did not confirm; both serve until it stops", metadata: ["error": "\(error)"])
            }
        }
        if let path = config.upgrade.socket {
            do {
                let server = try HandoverServer(path: path)
                handoverServer.withLockedValue { $0 = server }
                server.start(runtime: self)
            } catch {
                shared.logger.error(
                    "upgrade.socket: cannot listen; this meshd cannot hand its listeners over", metadata: ["error": "\(error)"])
            }
        }
        // Start-up code (config parsing, YAML, certificates, argument parsing) is not run again: a
        // second after ready, the executable's code pages and never-written read-only data pages leave
        // the resident set (they stay in the page cache, shared by every meshd on the machine) and
        // only what is in use faults back.
        let logger = shared.logger
        DispatchQueue.global().asyncAfter(deadline: .now() + 1) {
            let released = cmesh_release_code_pages()
            logger.debug("start-up code pages released from the resident set", metadata: ["bytes": "\(released)"])
        }
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
    func listenersBound() {
        shared.boundListeners = boundAddresses().values.compactMap { a in
            guard let ip = a.ipAddress, let port = a.port else { return nil }
            return HostPort(host: ip, port: port)
        }
        for loop in loops { loop.eventLoop.execute { loop.refreshNodeInboundPolicy() } }
    }

    /// `127.0.0.1:4140` / `[::1]:4140`.
    static func hostPort(_ a: SocketAddress) -> String {
        let ip = a.ipAddress ?? "?"
        // On the bytes: `String.contains(String)` is Foundation's search, 4.5 k instructions (the
        // access log names every request's upstream).
        return ip.utf8.contains(UInt8(ascii: ":")) ? "[\(ip)]:\(a.port ?? 0)" : "\(ip):\(a.port ?? 0)"
    }

    /// Bound addresses by listener name (`outbound`, `inbound`, `admin`).
    func boundAddresses() -> [String: SocketAddress] {
        channels.withLockedValue { $0.compactMapValues { $0.localAddress } }
    }

    /// Every listener: a bounded accept backlog, the address reusable at once after a restart.
    static func bootstrap(group: EventLoopGroup, backlog: Int32) -> ServerBootstrap {
        ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: backlog)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
    }

    /// A proxy listener (HTTP or opaque TCP): drained by `quiesce`, no Nagle delay, and a client's FIN
    /// kept as an event (a client may send its bytes and its FIN together: nothing it sent is lost).
    static func proxyBootstrap(group: EventLoopGroup, quiesce: ServerQuiescingHelper) -> ServerBootstrap {
        bootstrap(group: group, backlog: 1024)
            .serverChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(quiesce.makeServerChannelHandler(channel: channel))
                }
            }
            .childChannelOption(.tcpOption(.tcp_nodelay), value: 1)
            .childChannelOption(.allowRemoteHalfClosure, value: true)
    }

    func bindProxy(_ direction: Direction, _ listen: HostPort) async throws -> Channel {
        let config = self.config
        let allowed: [CIDR]? = config.mode == .node && direction == .outbound ? config.effectiveAllowedSources : nil
        let shared = self.shared
        let openCount = direction == .outbound ? shared.outboundOpen : shared.inboundOpen
        let quiesce = self.quiesce[direction]!
        let runtime = self
        return try await Self.proxyBootstrap(group: group, quiesce: quiesce)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    let loop = runtime.loopContext(for: channel.eventLoop)
                    let http = loop.snapshot.config.http
                    var limits = NIOHTTPDecoderLimitConfiguration()
                    limits.maxHeaderListSize = http.maxHeaderBytes
                    limits.maxHeaderFieldSize = http.maxHeaderBytes
                    let guardHandler = ConnectionGuard(
                        direction: direction, shared: shared, allowedSources: allowed, openCount: openCount,
                        maxConnections: http.maxConnections,
                        perSource: allowed == nil ? nil : (shared.outboundSources, http.maxConnectionsPerSource))
                    let sync = channel.pipeline.syncOperations
                    try sync.addHandler(guardHandler)
                    let proto = direction == .outbound ? loop.snapshot.config.outbound.protocol : loop.snapshot.config.inbound.protocol
                    func addHTTP() throws {
                        // NIO's server pipeline without its optional handlers: no pipelining assistance, error
                        // handling or header validation (HTTPProxyHandler does each). The decoder keeps (does
                        // not drop) the bytes after an Upgrade request: meshd switches upgraded connections
                        // to a byte pipe itself.
                        try sync.addHandler(HTTPResponseEncoder(configuration: .init()))
                        try sync.addHandler(
                            HTTPRequestDecoderHandler(HTTPRequestDecoder(leftOverBytesStrategy: .forwardBytes, limitConfiguration: limits)))
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
                    // Inbound mTLS (`inbound.tls`): the first bytes tell a TLS ClientHello from plaintext.
                    let tlsMode = direction == .inbound ? loop.snapshot.config.effectiveInboundTLS : .disabled
                    func addExplicit() throws {
                        switch proto {
                        case .http1: try addHTTP()
                        case .http2, .grpc: try addHTTP2()
                        case .tcp, .detect: try addTCP()
                        }
                    }
                    switch tlsMode != .disabled ? .detect : proto {
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
                                if tlsMode != .disabled {
                                    if detected == .tls {
                                        return try Self.addInboundTLS(channel: channel, loop: loop) { http2, info in
                                            guardHandler.tls = info
                                            if http2 { try addHTTP2() } else { try addHTTP() }
                                        }
                                    }
                                    if tlsMode == .strict {
                                        // Nothing is served without mTLS.
                                        shared.tlsRefused(
                                            .plaintext, .inbound, peer: channel.remoteAddress?.description ?? "?",
                                            detail: "inbound.tls is strict")
                                        return false
                                    }
                                    if proto != .detect {
                                        try addExplicit()
                                        return true
                                    }
                                }
                                if direction == .outbound, detected != .http09, let dst = guardHandler.originalDestination,
                                    loop.snapshot.mesh.owners.owner(ip: dst.ipAddress ?? "", port: dst.port ?? 0) == nil
                                {
                                    // Redirected (transparent capture) to an address no service owns: the
                                    // application's bytes go where it sent them, untouched.
                                    try addTCP()
                                    return true
                                }
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
            .listen(self, name: direction.label, listen, backlog: 1024)
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
        guard let provider = channel as? SocketOptionProvider, let local = channel.localAddress else {
            return channel.eventLoop.makeSucceededFuture(nil)
        }
        @Sendable func unlessLocal(_ address: SocketAddress) -> SocketAddress? {
            address.ipAddress == local.ipAddress && address.port == local.port ? nil : address
        }
        switch local {
        case .v4:
            let future: EventLoopFuture<sockaddr_in> = provider.unsafeGetSocketOption(
                level: SocketOptionLevel(IPPROTO_IP), name: SocketOptionName(80))  // SO_ORIGINAL_DST
            return future.map { unlessLocal(SocketAddress($0, host: "")) }.recover { _ in nil }
        case .v6:
            let future: EventLoopFuture<sockaddr_in6> = provider.unsafeGetSocketOption(
                level: SocketOptionLevel(IPPROTO_IPV6), name: SocketOptionName(80))  // IP6T_SO_ORIGINAL_DST
            return future.map { unlessLocal(SocketAddress($0, host: "")) }.recover { _ in nil }
        default:
            return channel.eventLoop.makeSucceededFuture(nil)
        }
    }

    /// Listeners of `protocol: tcp` services: each connection goes, as opaque TCP, to an endpoint
    /// picked by the service's balancer.
    func bindTCPServices() async throws {
        for service in config.services where service.protocol == .tcp {
            guard let listen = service.listen else { continue }
            let name = service.name
            let runtime = self
            let shared = self.shared
            // Its own quiescing helper: a drain stops this listener accepting at once, like the others.
            let quiesce = ServerQuiescingHelper(group: group)
            tcpQuiesce.withLockedValue { $0.append(quiesce) }
            let channel = try await Self.proxyBootstrap(group: group, quiesce: quiesce)
                .childChannelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        let loop = runtime.loopContext(for: channel.eventLoop)
                        let guardHandler = ConnectionGuard(
                            direction: .outbound, shared: shared,
                            allowedSources: loop.snapshot.config.mode == .node ? loop.snapshot.config.effectiveAllowedSources : nil,
                            openCount: shared.outboundOpen, maxConnections: loop.snapshot.config.http.maxConnections,
                            perSource: loop.snapshot.config.mode == .node
                                ? (shared.outboundSources, loop.snapshot.config.http.maxConnectionsPerSource) : nil)
                        try channel.pipeline.syncOperations.addHandler(guardHandler)
                        let idle = loop.services.first { $0.name == name }?.idleTimeout ?? loop.snapshot.config.upstream.idleTimeout
                        try channel.pipeline.syncOperations.addHandler(
                            TCPConnectHandler(
                                loop: loop, direction: .outbound, idleTimeout: idle,
                                resolve: { ch in ch.eventLoop.makeSucceededFuture(loop.tcpTarget(service: name)) }))
                    }
                }
                .listen(self, name: "tcp:" + name, listen, backlog: 1024)
            channels.withLockedValue { $0["tcp:" + name] = channel }
            shared.logger.info(
                "tcp service listening", metadata: ["service": "\(name)", "listen": "\(channel.localAddress.map(Self.hostPort) ?? "?")"])
        }
    }

    func bindAdmin(_ listen: HostPort) async throws -> Channel {
        let runtime = self
        let open = ManagedAtomic<Int>(0)
        let refused = shared.metrics.counter("meshd_connections_refused_total", [("direction", "admin"), ("reason", "connection_limit")])
        return try await Self.bootstrap(group: group, backlog: 64)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    let sync = channel.pipeline.syncOperations
                    try sync.addHandler(AdminConnectionLimit(open: open, refused: refused))
                    try sync.addHandler(IdleStateHandler(readTimeout: AdminLimits.idleTimeout))
                    try sync.configureHTTPServerPipeline()
                    try sync.addHandler(AdminHandler(runtime: runtime))
                }
            }
            .listen(self, name: "admin", listen, backlog: 64)
    }

    /// Runs blocking work (the hand-over's socket calls) on a thread of its own, not an event loop.
    static func offLoop<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
        try await withCheckedThrowingContinuation { continuation in
            DispatchQueue.global().async { continuation.resume(with: Result { try body() }) }
        }
    }

    /// The listeners a successor gets, in the order they were bound.
    func handoverListeners() -> [(name: String, fd: CInt)] { listenerFDs.withLockedValue { $0 } }

    func handoverCounted(_ result: String) {
        shared.metrics.counter("meshd_upgrade_handovers_total", [("result", result)]).increment()
    }

    /// A successor is ready on the same sockets: stop answering admin requests (the successor does)
    /// and drain as on SIGTERM, then exit 0.
    func handedOver() {
        if let admin = channels.withLockedValue({ $0["admin"] }) { admin.close(promise: nil) }
        shutdownRequested()
    }
}

extension ServerBootstrap {
    /// Serves on the listener `name`: the socket a predecessor handed over when it listens at
    /// `listen`, else a new one meshd binds itself (so it can hand it over in turn).
    func listen(_ runtime: MeshRuntime, name: String, _ listen: HostPort, backlog: Int32) async throws -> Channel {
        let address = try SocketAddress.makeAddressResolvingHost(listen.host, port: listen.port)
        if let fd = runtime.inherited.withLockedValue({ $0.removeValue(forKey: name) }) {
            let channel = try await withBoundSocket(fd).get()
            if let local = channel.localAddress, local.ipAddress == address.ipAddress, listen.port == 0 || local.port == listen.port {
                ListenerSocket.setBacklog(fd, backlog)
                runtime.listenerFDs.withLockedValue { $0.append((name, fd)) }
                runtime.shared.logger.info(
                    "--takeover: serving on the running meshd's socket",
                    metadata: ["listener": "\(name)", "listen": "\(MeshRuntime.hostPort(local))"])
                return channel
            }
            runtime.shared.logger.notice(
                "--takeover: the running meshd's listener is elsewhere; binding a new one",
                metadata: ["listener": "\(name)", "was": "\(channel.localAddress.map(MeshRuntime.hostPort) ?? "?")", "listen": "\(listen)"])
            try? await channel.close()
        }
        let fd = try ListenerSocket.make(address, backlog: backlog)
        let channel = try await withBoundSocket(fd).get()
        ListenerSocket.setBacklog(fd, backlog)
        runtime.listenerFDs.withLockedValue { $0.append((name, fd)) }
        return channel
    }
}
