import Logging
import MeshCore
import NIOCore
import NIOHTTP1
import NIOHTTP2
import NIOPosix

/// One multiplexed HTTP/2 (h2c, prior knowledge) connection to an endpoint, owned by one event loop's
/// `UpstreamPool`. Each request is a stream: a child channel whose pipeline is NIO's HTTP/2 ↔ HTTP/1
/// codec and an `UpstreamConnection`, so the proxy handler drives a stream exactly as it drives an
/// HTTP/1.1 connection. This handler sits after `NIOHTTP2Handler` on the connection's pipeline and
/// sees the root-stream frames: the endpoint's SETTINGS (its max concurrent streams) and GOAWAY.
///
/// Bounds: at most `min(http2.maxConcurrentStreams, peer's SETTINGS_MAX_CONCURRENT_STREAMS)` streams
/// are handed out per connection (the pool opens another connection past it); per stream, what is
/// buffered is bounded by `http2.initialWindowSize`: the endpoint is granted a quarter of it (see
/// `upstreamStreamWindow`).
final class HTTP2UpstreamConnection: ChannelInboundHandler {
    typealias InboundIn = HTTP2Frame

    let address: SocketAddress
    let shared: SharedRuntime
    let counters: ServiceCounters?
    private(set) var channel: Channel?
    private var multiplexer: NIOHTTP2Handler.StreamMultiplexer?
    /// Streams handed out (open or being opened).
    private(set) var streams = 0
    /// What this side allows, lowered to the peer's SETTINGS_MAX_CONCURRENT_STREAMS when it says so.
    private(set) var maxStreams: Int
    /// GOAWAY received or the connection failed: no new streams.
    private(set) var draining = false
    private(set) var ready = false
    private var waiting: [EventLoopPromise<UpstreamConnection>] = []
    var idleSince = NIODeadline.now()
    weak var pool: UpstreamPool?

    init(address: SocketAddress, shared: SharedRuntime, counters: ServiceCounters?, maxStreams: Int) {
        self.address = address
        self.shared = shared
        self.counters = counters
        self.maxStreams = maxStreams
    }

    var hasCapacity: Bool { !draining && streams < maxStreams }
    var isIdle: Bool { streams == 0 }

    /// The TCP connection is up and the HTTP/2 handler in place: streams waiting for it open now.
    func connected(_ channel: Channel, multiplexer: NIOHTTP2Handler.StreamMultiplexer) {
        self.channel = channel
        self.multiplexer = multiplexer
        ready = true
        shared.metrics.upstreamConnectionsOpen.increment()
        counters?.connections.wrappingIncrement(ordering: .relaxed)
        let queued = waiting
        waiting.removeAll()
        for promise in queued { createStream(promise) }
    }

    /// Connecting failed: every stream waiting for this connection fails with `error`.
    func failed(_ error: Error) {
        draining = true
        let queued = waiting
        waiting.removeAll()
        streams -= queued.count
        shared.metrics.upstreamHTTP2StreamsOpen.decrement(by: Double(queued.count))
        for promise in queued { promise.fail(error) }
        pool?.removeHTTP2(self)
    }

    /// A new stream, as an `UpstreamConnection` the proxy handler writes the request to.
    func openStream(on eventLoop: EventLoop) -> EventLoopFuture<UpstreamConnection> {
        streams += 1
        shared.metrics.upstreamHTTP2StreamsOpen.increment()
        let promise = eventLoop.makePromise(of: UpstreamConnection.self)
        if ready {
            createStream(promise)
        } else {
            waiting.append(promise)
        }
        return promise.futureResult
    }

    private func createStream(_ promise: EventLoopPromise<UpstreamConnection>) {
        guard let multiplexer, let channel, !draining || channel.isActive else {
            streams -= 1
            shared.metrics.upstreamHTTP2StreamsOpen.decrement()
            promise.fail(ChannelError.ioOnClosedChannel)
            return
        }
        let address = self.address
        let shared = self.shared
        let streamPromise = channel.eventLoop.makePromise(of: Channel.self)
        multiplexer.createStreamChannel(promise: streamPromise) { stream in
            stream.eventLoop.makeCompletedFuture {
                let sync = stream.pipeline.syncOperations
                try sync.addHandler(HeaderIndexingHandler())
                try sync.addHandler(HTTP2FramePayloadToHTTP1ClientCodec(httpProtocol: .http))
                try sync.addHandler(UpstreamConnection(address: address, shared: shared, stream: true))
            }
        }
        streamPromise.futureResult.assumeIsolated().whenComplete { [self] result in
            switch result {
            case .success(let stream):
                stream.closeFuture.assumeIsolated().whenComplete { [self] _ in self.streamClosed() }
                do {
                    promise.assumeIsolated().succeed(try stream.pipeline.syncOperations.handler(type: UpstreamConnection.self))
                } catch {
                    promise.fail(error)
                }
            case .failure(let error):
                self.streamClosed()
                promise.fail(error)
            }
        }
    }

    private func streamClosed() {
        streams -= 1
        shared.metrics.upstreamHTTP2StreamsOpen.decrement()
        if streams == 0 {
            idleSince = .now()
            if draining { close() }
        }
    }

    func close() {
        draining = true
        channel?.close(promise: nil)
    }

    // MARK: - Channel events (root stream)

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let frame = unwrapInboundIn(data)
        switch frame.payload {
        case .settings(.settings(let settings)):
            for s in settings where s.parameter == .maxConcurrentStreams {
                maxStreams = min(maxStreams, max(s.value, 1))
            }
        case .goAway:
            // The endpoint stops taking streams: the ones open finish, new ones go elsewhere.
            draining = true
            pool?.removeHTTP2(self)
            if streams == 0 { context.close(promise: nil) }
        default:
            break
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        if ready {
            ready = false
            shared.metrics.upstreamConnectionsOpen.decrement()
            counters?.connections.wrappingDecrement(ordering: .relaxed)
        }
        draining = true
        pool?.removeHTTP2(self)
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        // A stream's error (reset, protocol error on one stream) ends that stream only; its owner
        // hears of it through the stream channel. Anything else is a connection error: NIO has sent
        // GOAWAY and the connection cannot carry streams any more, so it leaves the pool and closes
        // (its streams' owners see them close and answer or retry).
        shared.logger.info("upstream HTTP/2 connection error", metadata: ["target": "\(address)", "error": "\(error)"])
        draining = true
        pool?.removeHTTP2(self)
        HTTP2Errors.closeAfterFrameLoop(context)
    }
}

extension UpstreamPool {
    /// A stream to `address` on a multiplexed HTTP/2 connection of this loop: an existing connection
    /// with a free stream, else a new connection (up to `http2.maxConnectionsPerEndpoint`), else the
    /// least busy one (its streams beyond the peer's limit wait inside NIO's HTTP/2 handler).
    func openHTTP2Stream(
        _ address: SocketAddress, settings: HTTP2Config, maxHeaderBytes: Int, timeout: MeshDuration, counters: ServiceCounters?
    ) -> (future: EventLoopFuture<UpstreamConnection>, reused: Bool) {
        let list = http2[address] ?? []
        if let conn = list.first(where: { $0.hasCapacity }) {
            shared.metrics.upstreamPoolReuse.increment()
            return (conn.openStream(on: eventLoop), true)
        }
        if list.count >= settings.maxConnectionsPerEndpoint,
            let conn = list.filter({ !$0.draining }).min(by: { $0.streams < $1.streams })
        {
            return (conn.openStream(on: eventLoop), true)
        }
        let conn = HTTP2UpstreamConnection(
            address: address, shared: shared, counters: counters, maxStreams: settings.maxConcurrentStreams)
        conn.pool = self
        http2[address, default: []].append(conn)
        let future = conn.openStream(on: eventLoop)
        connectHTTP2(conn, settings: settings, maxHeaderBytes: maxHeaderBytes, timeout: timeout)
        return (future, false)
    }

    /// The window meshd grants an endpoint per stream: a quarter of `http2.initialWindowSize` (at least
    /// the protocol's 65 535). NIO credits a stream's window as soon as its data is handed to the proxy
    /// handler, so a stream whose client stops reading can hold one delivered burst (waiting for the
    /// client, copied compact) plus one more window (received, not yet delivered), whose frames are
    /// slices that keep the connection's read buffers alive whole (up to about twice their bytes): a
    /// quarter keeps all of it within the one window a stalled stream may cost (half measured up to
    /// 1.5 windows; docs/reliability.md).
    static func upstreamStreamWindow(_ configured: Int) -> Int { max(65_535, configured / 4) }

    private func connectHTTP2(_ conn: HTTP2UpstreamConnection, settings: HTTP2Config, maxHeaderBytes: Int, timeout: MeshDuration) {
        let shared = self.shared
        let window = Self.upstreamStreamWindow(settings.initialWindowSize)
        var connectionConfig = NIOHTTP2Handler.ConnectionConfiguration()
        connectionConfig.initialSettings = [
            HTTP2Setting(parameter: .enablePush, value: 0),
            HTTP2Setting(parameter: .initialWindowSize, value: window),
            HTTP2Setting(parameter: .maxHeaderListSize, value: maxHeaderBytes),
        ]
        connectionConfig.targetWindowSize = window * settings.maxConcurrentStreams
        connectionConfig.maximumRecentlyResetStreams = settings.recentlyResetStreams
        var streamConfig = NIOHTTP2Handler.StreamConfiguration()
        streamConfig.targetWindowSize = window
        // NIO's rapid-reset defence (200 RST_STREAM per 30 s) guards a server against its clients; an
        // endpoint that ends streams with RST_STREAM(NO_ERROR) after a full response (RFC 9113 §8.1,
        // nginx does) would otherwise get its connection dropped every 200 requests.
        streamConfig.streamResetFrameRateLimit.maximumCount = Int(Int32.max)
        let connection = connectionConfig
        let stream = streamConfig
        let loopBound = NIOLoopBound(conn, eventLoop: eventLoop)
        let tls = self.tls
        // The handshake's verification, set by the channel initializer (on `eventLoop`).
        let verification = NIOLoopBoundBox.makeEmptyBox(valueType: EventLoopFuture<Void>.self, eventLoop: eventLoop)
        ClientBootstrap(group: eventLoop)
            .connectTimeout(.nanoseconds(timeout.nanoseconds))
            .channelOption(.tcpOption(.tcp_nodelay), value: 1)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    if let tls {
                        verification.value = try tls.addHandlers(to: channel, http2: true, shared: shared).verified.futureResult
                    }
                    let sync = channel.pipeline.syncOperations
                    let mux = try sync.configureHTTP2Pipeline(
                        mode: .client, connectionConfiguration: connection, streamConfiguration: stream
                    ) { pushed in
                        // Push is disabled in our SETTINGS; a stream the endpoint opens anyway is refused.
                        pushed.close()
                    }
                    _ = mux
                    try sync.addHandler(loopBound.value)
                }
            }
            .connect(to: conn.address)
            .flatMap { channel in
                // mTLS: streams are opened once the endpoint proved its identity.
                guard let verified = verification.value else { return channel.eventLoop.makeSucceededFuture(channel) }
                return verified.map { channel }
            }
            .assumeIsolated()
            .whenComplete { result in
                switch result {
                case .success(let channel):
                    shared.metrics.upstreamConnectsOK.increment()
                    do {
                        let mux = try channel.pipeline.syncOperations.handler(type: NIOHTTP2Handler.self).syncMultiplexer()
                        conn.connected(channel, multiplexer: mux)
                    } catch {
                        conn.failed(error)
                        channel.close(promise: nil)
                    }
                case .failure(let error):
                    shared.metrics.upstreamConnectsFailed.increment()
                    conn.failed(error)
                }
            }
    }

    /// Whether a stream to `address` can go on an existing connection (no new connection needed).
    func hasHTTP2Capacity(_ address: SocketAddress) -> Bool {
        http2[address]?.contains(where: { $0.hasCapacity }) ?? false
    }

    /// A connection that stopped taking streams leaves the pool (its open streams finish).
    func removeHTTP2(_ conn: HTTP2UpstreamConnection) {
        guard var list = http2[conn.address], let i = list.firstIndex(where: { $0 === conn }) else { return }
        list.remove(at: i)
        http2[conn.address] = list.isEmpty ? nil : list
    }

    func sweepHTTP2(limit: NIODeadline) {
        for list in http2.values {
            for conn in list where conn.isIdle && conn.idleSince < limit { conn.close() }
        }
    }

    var http2ConnectionCount: Int { http2.values.reduce(0) { $0 + $1.count } }
}

enum HTTP2Errors {
    /// Whether an error the HTTP/2 handler raised concerns one stream, not the connection.
    /// `NoSuchStream` is not one of them: NIO raises it for a frame on a stream it has forgotten (closed,
    /// and no longer among the recently reset ones) as a connection error, after sending GOAWAY.
    static func isStreamLevel(_ error: Error) -> Bool {
        error is NIOHTTP2Errors.StreamError || error is NIOHTTP2Errors.StreamClosed
    }

    /// Closes an HTTP/2 connection after a connection error, once NIO's frame loop has returned:
    /// closed from inside it (errors are raised there), the streams the loop still creates would
    /// stay open forever with their pipelines — the memory a rapid-reset flood used to pile up.
    static func closeAfterFrameLoop(_ context: ChannelHandlerContext) {
        let channel = context.channel
        context.eventLoop.assumeIsolated().execute { channel.close(promise: nil) }
    }
}
