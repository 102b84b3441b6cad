import Logging
import MeshCore
import NIOCore
import NIOHTTP1
import NIOHTTP2
import NIOPosix

/// The idle connections to one endpoint, release order (oldest first). A connection keeps the list
/// it was last released to, so that a release finds it without hashing the endpoint's address (a
/// `SocketAddress` hash and compare cost about 800 instructions, and a request paid three).
final class IdleList {
    var conns: [UpstreamConnection] = []
    /// Whether the pool still holds this list for its address (empty lists leave at the next sweep).
    var pooled = true
    /// The pool that holds it (a connection released to another pool finds that pool's list).
    let owner: ObjectIdentifier

    init(owner: UpstreamPool) { self.owner = ObjectIdentifier(owner) }
}

/// Keep-alive HTTP/1.1 connections to endpoints, owned by one event loop: the connections it holds
/// live on that loop, like the downstream connections they serve, so leasing one is one lookup of the
/// endpoint and an array pop, and a release an append.
///
/// Bounds: at most `upstream.maxIdlePerEndpoint` idle connections per endpoint (extra ones are closed
/// on release); idle ones are closed after `upstream.idleTimeout` (checked every tick), and the
/// lists of endpoints left without idle connections go at the same tick.
final class UpstreamPool {
    let eventLoop: EventLoop
    let shared: SharedRuntime
    private var idle: [SocketAddress: IdleList] = [:]
    /// Multiplexed HTTP/2 connections by endpoint (see `HTTP2UpstreamConnection`).
    var http2: [SocketAddress: [HTTP2UpstreamConnection]] = [:]
    private(set) var idleCount = 0
    private var config = UpstreamConfig()
    /// mTLS to the endpoints (another meshd): every connection of this pool presents the same identity
    /// and expects the same one (see `LoopContext.upstreamPool`); nil: plaintext.
    let tls: UpstreamTLS?

    /// The loop's held flushes (HTTP/2 connections flush once per read, `FlushBatch`).
    let flushes: FlushBatch

    init(eventLoop: EventLoop, shared: SharedRuntime, tls: UpstreamTLS? = nil, flushes: FlushBatch = FlushBatch()) {
        self.eventLoop = eventLoop
        self.shared = shared
        self.tls = tls
        self.flushes = flushes
    }

    func configure(_ config: UpstreamConfig) { self.config = config }

    /// The most recently used idle connection to `address`, if one is still open.
    func lease(_ address: SocketAddress) -> UpstreamConnection? {
        guard let list = idle[address] else { return nil }
        while let conn = list.conns.popLast() {
            idleCount -= 1
            if conn.isUsable {
                shared.metrics.upstreamPoolReuse.increment()
                return conn
            }
            conn.close()
        }
        return nil
    }

    /// Gives a connection back after a complete exchange; it is kept if there is room.
    func release(_ conn: UpstreamConnection) {
        if conn.isStream {
            // An HTTP/2 stream whose exchange completed closes by itself; closing it here, before
            // NIO has seen both ends, would reset it (RST_STREAM), which peers count as abuse.
            conn.owner = nil
            return
        }
        guard conn.isUsable else {
            conn.close()
            return
        }
        let list: IdleList
        if let known = conn.idleList, known.pooled, known.owner == ObjectIdentifier(self) {
            list = known
        } else if let held = idle[conn.address] {
            list = held
            conn.idleList = held
        } else {
            list = IdleList(owner: self)
            idle[conn.address] = list
            conn.idleList = list
        }
        guard list.conns.count < config.maxIdlePerEndpoint else {
            conn.close()
            return
        }
        conn.idleSince = .now()
        list.conns.append(conn)
        idleCount += 1
    }

    /// An idle connection closed by its peer leaves the pool.
    func remove(_ conn: UpstreamConnection) {
        guard let list = conn.idleList, list.pooled, list.owner == ObjectIdentifier(self),
            let i = list.conns.firstIndex(where: { $0 === conn })
        else { return }
        list.conns.remove(at: i)
        idleCount -= 1
    }

    func sweep(now: NIODeadline) {
        let limit = now - .nanoseconds(config.idleTimeout.nanoseconds)
        if !http2.isEmpty { sweepHTTP2(limit: limit) }
        guard !idle.isEmpty else { return }
        for (address, list) in idle {
            // Oldest first: the list is in release order.
            let expired = list.conns.prefix { $0.idleSince < limit }
            if expired.count == list.conns.count {
                // Empty now: the list leaves (a connection leased from it finds the address again).
                list.pooled = false
                idle[address] = nil
            }
            guard !expired.isEmpty else { continue }
            // Out of the pool before closing: a close may report back (`remove`) right away, and
            // must not find them there (that counted them twice: a negative idle gauge).
            list.conns.removeFirst(expired.count)
            idleCount -= expired.count
            for c in expired { c.close() }
        }
    }

    /// Closes idle connections whose endpoint is not in `keep` (after a discovery update or reload).
    /// A node proxy's inbound targets are pods named per request, not endpoints: kept when asked.
    func closeIdle(except keep: Set<SocketAddress>, keepAnyInboundTarget: Bool) {
        guard !keepAnyInboundTarget else { return }
        for (address, list) in http2 where !keep.contains(address) {
            // Streams still open finish; the connection closes when the last one does.
            for c in list where c.isIdle { c.close() }
        }
        for (address, list) in idle where !keep.contains(address) {
            idle[address] = nil  // (before closing: see `sweep`)
            let conns = list.conns
            list.conns = []
            list.pooled = false
            idleCount -= conns.count
            for c in conns { c.close() }
        }
    }

    func closeAll() {
        for list in http2.values { for c in list { c.close() } }
        let lists = idle.values
        idle.removeAll()
        idleCount = 0
        for list in lists {
            let conns = list.conns
            list.conns = []
            list.pooled = false
            for c in conns { c.close() }
        }
    }

    /// Opens a new connection to `address` on this loop.
    func connect(
        _ address: SocketAddress, maxHeaderBytes: Int, timeout: MeshDuration, counters: ServiceCounters?
    ) -> EventLoopFuture<UpstreamConnection> {
        let shared = self.shared
        let limits: NIOHTTPDecoderLimitConfiguration = {
            var l = NIOHTTPDecoderLimitConfiguration()
            l.maxHeaderFieldSize = maxHeaderBytes
            l.maxHeaderListSize = maxHeaderBytes
            return l
        }()
        let connectTimeout = TimeAmount.nanoseconds(timeout.nanoseconds)
        let tls = self.tls
        // The handshake's verification, set by the channel initializer (on `eventLoop`).
        let verification = NIOLoopBoundBox.makeEmptyBox(valueType: EventLoopFuture<Void>.self, eventLoop: eventLoop)
        return ClientBootstrap(group: eventLoop)
            .connectTimeout(connectTimeout)
            .channelOption(.tcpOption(.tcp_nodelay), value: 1)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    if let tls {
                        verification.value = try tls.addHandlers(to: channel, http2: false, shared: shared).verified.futureResult
                    }
                    try channel.pipeline.syncOperations.addHandler(HTTPRequestEncoder(configuration: .init()))
                    try channel.pipeline.syncOperations.addHandler(
                        HTTPResponseDecoderHandler(HTTPResponseDecoder(leftOverBytesStrategy: .forwardBytes, limitConfiguration: limits)))
                    try channel.pipeline.syncOperations.addHandler(
                        UpstreamConnection(address: address, shared: shared, counters: counters))
                }
            }
            .connect(to: address)
            .flatMap { channel in
                // mTLS: handed out once the endpoint proved its identity.
                guard let verified = verification.value else { return channel.eventLoop.makeSucceededFuture(channel) }
                return verified.map { channel }
            }
            .flatMapThrowing { channel in
                shared.metrics.upstreamConnectsOK.increment()
                return try channel.pipeline.syncOperations.handler(type: UpstreamConnection.self)
            }
            .flatMapErrorThrowing { error in
                shared.metrics.upstreamConnectsFailed.increment()
                throw error
            }
    }
}

/// The receiving side of an upstream exchange: the downstream proxy handler that leased the connection.
protocol UpstreamOwner: AnyObject {
    func upstreamRead(_ part: HTTPClientResponsePart, from conn: UpstreamConnection)
    /// A response head from an HTTP/2 upstream, as its checked block.
    func upstreamHead(_ head: ResponseHead, from conn: UpstreamConnection)
    func upstreamReadComplete(from conn: UpstreamConnection)
    func upstreamWritabilityChanged(writable: Bool, from conn: UpstreamConnection)
    func upstreamClosed(error: Error?, from conn: UpstreamConnection)
    /// Whether the downstream can take more response bytes (else upstream reads are held).
    var downstreamWritable: Bool { get }
}

/// The last handler of an upstream channel: forwards response parts to its current owner and holds
/// reads while the owner's downstream cannot take more (backpressure).
final class UpstreamConnection: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPClientResponsePart
    typealias OutboundIn = HTTPClientRequestPart
    typealias OutboundOut = HTTPClientRequestPart

    let address: SocketAddress
    let shared: SharedRuntime
    /// The circuit-breaker counters of the service that opened the connection (connections open).
    let counters: ServiceCounters?
    private var context: ChannelHandlerContext?
    weak var owner: UpstreamOwner?
    weak var pool: UpstreamPool?
    /// The pool's list of idle connections to `address` this connection was last released to.
    var idleList: IdleList?
    var idleSince = NIODeadline.now()
    /// False once the peer said `Connection: close`, the exchange broke, or the channel closed.
    var reusable = true
    private var readPending = false
    private(set) var active = false
    /// Requests this connection carried (1 = fresh).
    var uses = 0

    /// The multiplexed connection of an HTTP/2 stream (then this is not a channel handler: the
    /// connection turns its parts into frames): never pooled (one exchange per stream), not counted as
    /// a connection.
    let multiplexed: HTTP2UpstreamConnection?
    /// The stream's state, kept by `multiplexed`.
    var h2 = UpstreamStreamState()
    var isStream: Bool { multiplexed != nil }

    init(address: SocketAddress, shared: SharedRuntime, counters: ServiceCounters? = nil) {
        self.address = address
        self.shared = shared
        self.counters = counters
        self.multiplexed = nil
    }

    /// A stream of `connection`.
    init(stream connection: HTTP2UpstreamConnection) {
        self.address = connection.address
        self.shared = connection.shared
        self.counters = nil
        self.multiplexed = connection
        self.reusable = false
        self.active = true
    }

    var isUsable: Bool { active && reusable }
    var isWritable: Bool {
        if let multiplexed { return multiplexed.isWritable(self) }
        return context?.channel.isWritable ?? false
    }

    /// Kept after the handler leaves the pipeline (an upgraded connection still needs reads).
    private var channel: Channel?

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        self.channel = context.channel
        self.active = context.channel.isActive
        if active && !isStream {
            shared.metrics.upstreamConnectionsOpen.increment()
            counters?.connections.wrappingIncrement(ordering: .relaxed)
        }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
    }

    func channelActive(context: ChannelHandlerContext) {
        if !active {
            active = true
            if isStream { return context.fireChannelActive() }
            shared.metrics.upstreamConnectionsOpen.increment()
            counters?.connections.wrappingIncrement(ordering: .relaxed)
        }
        context.fireChannelActive()
    }

    func channelInactive(context: ChannelHandlerContext) {
        if active && !isStream {
            shared.metrics.upstreamConnectionsOpen.decrement()
            counters?.connections.wrappingDecrement(ordering: .relaxed)
        }
        active = false
        reusable = false
        if let owner {
            self.owner = nil
            owner.upstreamClosed(error: nil, from: self)
        } else {
            pool?.remove(self)
        }
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        reusable = false
        if let owner {
            self.owner = nil
            owner.upstreamClosed(error: error, from: self)
        }
        context.close(promise: nil)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let part = unwrapInboundIn(data)
        if case .head(let head) = part, !head.isKeepAlive { reusable = false }
        if let owner {
            owner.upstreamRead(part, from: self)
        } else {
            // Bytes from an idle connection (or after the owner left): it cannot be reused.
            reusable = false
            context.close(promise: nil)
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        owner?.upstreamReadComplete(from: self)
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        owner?.upstreamWritabilityChanged(writable: context.channel.isWritable, from: self)
    }

    func read(context: ChannelHandlerContext) {
        if let owner, !owner.downstreamWritable {
            readPending = true
        } else {
            context.read()
        }
    }

    /// The downstream became writable again: resume reading the response.
    func resumeReading() {
        if let multiplexed {
            multiplexed.resume(self)
        } else if readPending, let context {
            readPending = false
            context.read()
        }
    }

    /// A request's head: as the HTTP/2 connection's block, or the HTTP/1.1 head. (The proxy handler
    /// makes an HTTP/2 block only for an HTTP/2 upstream; one that reached an HTTP/1.1 connection
    /// anyway is translated.)
    func writeHead(_ head: UpstreamRequestHead) {
        if let multiplexed { return multiplexed.send(head: head, on: self) }
        switch head {
        case .http1(let head): context?.write(wrapOutboundOut(.head(head)), promise: nil)
        case .h2(let block):
            assertionFailure("an HTTP/2 block for an HTTP/1.1 connection")
            context?.write(wrapOutboundOut(.head(HTTP2Conversion.http1Head(forwarded: block))), promise: nil)
        }
    }

    func write(_ part: HTTPClientRequestPart) {
        if let multiplexed { return multiplexed.send(part, on: self) }
        context?.write(wrapOutboundOut(part), promise: nil)
    }

    func writeAndFlush(_ part: HTTPClientRequestPart) {
        if let multiplexed {
            multiplexed.send(part, on: self)
            multiplexed.flush(self)
            return
        }
        context?.writeAndFlush(wrapOutboundOut(part), promise: nil)
    }

    func flush() {
        if let multiplexed { return multiplexed.flush(self) }
        context?.flush()
    }

    /// Asks the channel to read (after the pipeline changed).
    func channelRead() { channel?.read() }
    func channelFlush() { channel?.flush() }

    func close() {
        reusable = false
        if let multiplexed {
            // A stream is reset (RST_STREAM CANCEL) unless it is over at both ends.
            multiplexed.cancel(self)
            return
        }
        owner = nil
        context?.close(promise: nil)
    }

    /// After a `101 Switching Protocols`: the connection leaves HTTP (and the pool's accounting) and
    /// becomes one side of a byte pipe. Bytes the decoder already holds go on to `glue`.
    func becomeTunnel(_ glue: GlueHandler) throws {
        guard let context else { return }
        reusable = false
        owner = nil
        if active {
            active = false
            shared.metrics.upstreamConnectionsOpen.decrement()
            counters?.connections.wrappingDecrement(ordering: .relaxed)
        }
        let sync = context.pipeline.syncOperations
        _ = context.channel.setOption(.allowRemoteHalfClosure, value: true)
        try sync.addHandler(glue)
        sync.removeHandler(context: context, promise: nil)
        if let encoder = try? sync.context(handlerType: HTTPRequestEncoder.self) { sync.removeHandler(context: encoder, promise: nil) }
        if let decoder = try? sync.context(handlerType: HTTPResponseDecoderHandler.self) {
            sync.removeHandler(context: decoder, promise: nil)
        }
    }
}
