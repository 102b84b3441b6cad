import Atomics
import MeshCore
import NIOCore

/// First handler of every downstream connection: enforces the listener's connection bound and, in
/// node mode, the allowed source CIDRs; counts open connections; and notes whether any bytes arrived
/// since the last complete request (so a half-sent request head is told apart from an idle keep-alive).
final class ConnectionGuard: ChannelInboundHandler, LoopTimed {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer

    let direction: Direction
    let shared: SharedRuntime
    let allowedSources: [CIDR]?
    let openCount: ManagedAtomic<Int>
    let maxConnections: Int
    /// Node mode outbound: connections per source, and their bound (`http.maxConnectionsPerSource`).
    let perSource: (table: SourceConnections, limit: Int)?
    private var countedSource: String?
    private var counted = false
    /// Set on every read; the proxy handler clears it when a request completes.
    var sawBytes = false
    /// Outbound: where an iptables REDIRECT sent this connection (SO_ORIGINAL_DST), if it was.
    var originalDestination: SocketAddress?
    /// Inbound mTLS: the caller the handshake proved (nil: plaintext).
    var tls: TLSConnectionInfo?
    /// HTTP/2: the rapid-reset defence (streams reset before meshd started work on them).
    var prematureResets: PrematureResetLimiter?
    /// HTTP/2: the client's address as text, made once for all the connection's streams.
    var clientIP: String?
    /// Streams whose first attempt waits for the end of the current read cycle.
    private var deferred: [HTTPProxyHandler] = []
    private var inReadCycle = false
    /// This read counts in the loop's reads in progress (HTTP/2: flushes it causes wait for its end).
    private var holdingFlushes = false
    private var closeAtReadComplete = false
    /// HTTP/2: the connection's own timeouts (see `watchHTTP2`).
    private var http2: HTTP2Watch?
    private weak var loop: LoopContext?

    struct HTTP2Watch {
        var idleTimeout: TimeAmount
        var firstRequestTimeout: TimeAmount
        var openStreams = 0
        var sawStream = false
        var since = NIODeadline.now()
    }

    /// HTTP/2: closes the connection when no stream is open for `idleTimeout`, and when no request
    /// has started within `firstRequestTimeout` of the connection (a silent client, a preface
    /// alone, a HEADERS block never finished) — NIO's connection manager only sends GOAWAY and a
    /// PING, which such a client never answers.
    func watchHTTP2(loop: LoopContext, idleTimeout: MeshDuration, firstRequestTimeout: MeshDuration) {
        http2 = HTTP2Watch(
            idleTimeout: .nanoseconds(idleTimeout.nanoseconds), firstRequestTimeout: .nanoseconds(firstRequestTimeout.nanoseconds))
        self.loop = loop
        loop.register(self)
    }

    /// HTTP/2 streams open on this connection (0 before `watchHTTP2`).
    var openStreams: Int { http2?.openStreams ?? 0 }

    func streamOpened() {
        http2?.openStreams += 1
        http2?.sawStream = true
    }

    func streamClosed() {
        guard var w = http2 else { return }
        w.openStreams -= 1
        if w.openStreams == 0 { w.since = .now() }
        http2 = w
    }

    func checkTimeouts(now: NIODeadline) {
        guard let w = http2, w.openStreams == 0, let context else { return }
        let limit = w.sawStream ? w.idleTimeout : w.firstRequestTimeout
        guard now - w.since > limit else { return }
        http2 = nil
        loop?.unregister(self)
        shared.logger.debug(
            w.sawStream ? "closing idle HTTP/2 connection" : "closing HTTP/2 connection: no request in time",
            metadata: ["direction": "\(direction.label)", "client": "\(context.channel.remoteAddress?.description ?? "?")"])
        if !w.sawStream { shared.metrics.error(.headerTimeout, direction).increment() }
        context.close(promise: nil)
    }

    init(
        direction: Direction, shared: SharedRuntime, allowedSources: [CIDR]?, openCount: ManagedAtomic<Int>, maxConnections: Int,
        perSource: (table: SourceConnections, limit: Int)? = nil
    ) {
        self.perSource = perSource
        self.direction = direction
        self.shared = shared
        self.allowedSources = allowedSources
        self.openCount = openCount
        self.maxConnections = maxConnections
    }

    private var context: ChannelHandlerContext?

    func handlerAdded(context: ChannelHandlerContext) { self.context = context }
    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
        endHoldingFlushes()
        deferred.removeAll()  // (each handler holds this guard: no cycle may outlive the connection)
        if http2 != nil {
            http2 = nil
            loop?.unregister(self)
        }
    }

    /// Writes bytes below the HTTP codec and closes: for a reply when no request is in progress at
    /// the HTTP layer (the 408 of a request head that never completed).
    func writeRawAndClose(_ text: String) {
        guard let context else { return }
        context.writeAndFlush(NIOAny(context.channel.allocator.buffer(string: text))).assumeIsolated().whenComplete { _ in
            context.close(promise: nil)
        }
    }

    func channelActive(context: ChannelHandlerContext) {
        if let allowed = allowedSources {
            let ip = context.channel.remoteAddress?.ipAddress.flatMap { IPAddress($0) }
            if ip == nil || !allowed.contains(where: { $0.contains(ip!) }) {
                shared.metrics.connectionsRefused[direction.rawValue][0].increment()
                if let left = shared.refusedLog.admit() {
                    shared.logger.warning(
                        "refused connection: source not allowed",
                        metadata: [
                            "direction": "\(direction.label)", "source": "\(context.channel.remoteAddress?.description ?? "?")",
                            "suppressed": "\(left)",
                        ])
                }
                context.close(promise: nil)
                return
            }
        }
        let open = openCount.wrappingIncrementThenLoad(ordering: .relaxed)
        counted = true
        if open > maxConnections {
            shared.metrics.connectionsRefused[direction.rawValue][1].increment()
            if let left = shared.refusedLog.admit() {
                shared.logger.warning(
                    "refused connection: listener at http.maxConnections",
                    metadata: ["limit": "\(maxConnections)", "suppressed": "\(left)"])
            }
            context.close(promise: nil)
            return
        }
        if let perSource {
            let source = context.channel.remoteAddress?.ipAddress ?? "?"
            guard perSource.table.acquire(source, limit: perSource.limit) else {
                shared.metrics.connectionsRefused[direction.rawValue][2].increment()
                if let left = shared.refusedLog.admit() {
                    shared.logger.warning(
                        "refused connection: source at http.maxConnectionsPerSource",
                        metadata: [
                            "direction": "\(direction.label)", "source": "\(source)", "limit": "\(perSource.limit)",
                            "suppressed": "\(left)",
                        ])
                }
                context.close(promise: nil)
                return
            }
            countedSource = source
        }
        shared.metrics.connectionsOpen[direction.rawValue].increment()
        shared.metrics.connectionsTotal[direction.rawValue].increment()
        if direction == .outbound {
            MeshRuntime.originalDestination(context.channel).assumeIsolated().whenSuccess { [self] dst in
                self.originalDestination = dst
            }
        }
        context.fireChannelActive()
    }

    func channelInactive(context: ChannelHandlerContext) {
        deferred.removeAll()
        endHoldingFlushes()
        if http2 != nil {
            http2 = nil
            loop?.unregister(self)
        }
        if let source = countedSource {
            countedSource = nil
            perSource?.table.release(source)
        }
        if counted {
            counted = false
            let open = openCount.wrappingDecrementThenLoad(ordering: .relaxed)
            if open + 1 <= maxConnections { shared.metrics.connectionsOpen[direction.rawValue].decrement() }
        }
        context.fireChannelInactive()
    }

    /// An HTTP/2 stream of this connection was reset by the client before meshd started working on
    /// it; past `http2.maxPrematureResets` in a second the connection is closed (its other streams with it).
    func streamResetPrematurely() {
        guard var limiter = prematureResets, let context else { return }
        let over = limiter.record(now: Int64(NIODeadline.now().uptimeNanoseconds))
        prematureResets = limiter
        guard over else { return }
        prematureResets = nil  // once
        shared.metrics.counter("meshd_connections_closed_total", [("direction", direction.label), ("reason", "rapid_reset")])
            .increment()
        if let left = shared.protocolErrorLog.admit() {
            shared.logger.warning(
                "closing HTTP/2 connection: streams reset as soon as opened (rapid reset)",
                metadata: [
                    "direction": "\(direction.label)", "client": "\(context.channel.remoteAddress?.description ?? "?")",
                    "limit": "\(limiter.limit) per second", "suppressed": "\(left)",
                ])
        }
        closeAfterRead(context: context)
    }

    /// Closes the connection once the current read cycle is over. Closing it from inside the HTTP/2
    /// handler's frame loop (a stream's event) leaves the streams that loop creates afterwards open
    /// forever, with their pipelines (about 1 KiB each).
    private func closeAfterRead(context: ChannelHandlerContext) {
        if inReadCycle {
            closeAtReadComplete = true
        } else {
            context.close(promise: nil)
        }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        sawBytes = true
        inReadCycle = true
        if !holdingFlushes, let loop {
            holdingFlushes = true
            loop.flushes.readStarted()
        }
        context.fireChannelRead(data)
    }

    private func endHoldingFlushes() {
        guard holdingFlushes else { return }
        holdingFlushes = false
        loop?.flushes.readEnded()
    }

    /// HTTP/2: holds a stream's first attempt until every frame of this read is processed (a reset
    /// in the same read closes the stream first). False outside a read cycle: start now.
    func deferUntilReadComplete(_ handler: HTTPProxyHandler) -> Bool {
        guard inReadCycle else { return false }
        deferred.append(handler)
        return true
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        // The HTTP/2 handler (further on) parses nothing more in this cycle once this propagates,
        // and hands streams their pending frames on the way.
        context.fireChannelReadComplete()
        inReadCycle = false
        if closeAtReadComplete {
            deferred.removeAll()
            endHoldingFlushes()
            context.close(promise: nil)
            return
        }
        if !deferred.isEmpty {
            let ready = deferred
            deferred.removeAll(keepingCapacity: true)
            for handler in ready { handler.startDeferredAttempt() }
        }
        // The streams' requests go out, one write per upstream connection.
        endHoldingFlushes()
    }
}
