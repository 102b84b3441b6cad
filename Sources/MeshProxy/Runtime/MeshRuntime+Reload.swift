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

// Reload, publishing snapshots to every loop, and graceful drain.
extension MeshRuntime {
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
        if new.upgrade != old.upgrade { needsRestart.append("upgrade.socket") }
        if new.threads != old.threads { needsRestart.append("threads") }
        if new.identity != old.identity { needsRestart.append("identity (its files reload by themselves)") }
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
            new.upgrade = old.upgrade
            new.threads = old.threads
            new.node = old.node
            new.identity = old.identity
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
        if new.accessLogOptions.path != shared.accessLogWriter.currentPath {
            do {
                try shared.accessLogWriter.use(path: new.accessLogOptions.path)
            } catch {
                shared.logger.error(
                    "cannot open the new access-log file; lines keep going where they went", metadata: ["problem": "\(error)"])
            }
        }
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
        stopping.store(true, ordering: .relaxed)
        handoverServer.withLockedValue { $0 }?.stop()
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
}
