import Logging
import MeshCore
import NIOCore
import NIOHTTP1
import NIOHTTP2

/// The downstream side of an HTTP/2 connection (prior knowledge, h2c), on either listener: NIO's
/// HTTP/2 handler with one child channel per stream, each running NIO's HTTP/2 ↔ HTTP/1 codec and an
/// `HTTPProxyHandler` — the same route → balance → endpoint path as HTTP/1.1, one request per stream.
///
/// Bounds: `http2.maxConcurrentStreams` streams per connection (SETTINGS; the client must wait),
/// `http2.initialWindowSize` bytes of flow-control window per stream (a stream whose reader is slow
/// stops being credited, so the client stops sending), `http.maxHeaderBytes` per header list;
/// `http.idleTimeout` closes a connection without streams (GOAWAY first); a graceful drain sends
/// GOAWAY and gives open streams `drainTimeout` to finish.
enum HTTP2Downstream {
    static func configure(
        _ channel: Channel, direction: Direction, loop: LoopContext, connectionGuard: ConnectionGuard
    ) throws {
        let config = loop.snapshot.config
        let sync = channel.pipeline.syncOperations
        var connection = NIOHTTP2Handler.ConnectionConfiguration()
        connection.initialSettings = [
            HTTP2Setting(parameter: .maxConcurrentStreams, value: config.http2.maxConcurrentStreams),
            HTTP2Setting(parameter: .initialWindowSize, value: config.http2.initialWindowSize),
            HTTP2Setting(parameter: .maxHeaderListSize, value: config.http.maxHeaderBytes),
        ]
        connection.targetWindowSize = config.http2.initialWindowSize * config.http2.maxConcurrentStreams
        connection.maximumRecentlyResetStreams = config.http2.recentlyResetStreams
        var stream = NIOHTTP2Handler.StreamConfiguration()
        stream.targetWindowSize = config.http2.initialWindowSize
        stream.streamResetFrameRateLimit.maximumCount = config.http2.maxResetStreams
        let manager = NIOHTTP2ServerConnectionManagementHandler(
            eventLoop: channel.eventLoop,
            configuration: .init(
                maxIdleTime: .nanoseconds(config.http.idleTimeout.nanoseconds), maxAge: nil,
                maxGraceTime: .nanoseconds(config.drainTimeout.nanoseconds), keepalive: nil))
        connectionGuard.prematureResets = PrematureResetLimiter(limit: config.http2.maxPrematureResets)
        connectionGuard.watchHTTP2(
            loop: loop, idleTimeout: config.http.idleTimeout, firstRequestTimeout: config.http.headerReadTimeout)
        let bound = NIOLoopBound((loop, connectionGuard), eventLoop: channel.eventLoop)
        _ = try sync.configureHTTP2Pipeline(
            mode: .server, connectionConfiguration: connection, streamConfiguration: stream,
            streamDelegate: manager.http2StreamDelegate
        ) { streamChannel in
            streamChannel.eventLoop.makeCompletedFuture {
                let (loop, guardHandler) = bound.value
                let sync = streamChannel.pipeline.syncOperations
                try sync.addHandler(HeaderIndexingHandler())
                try sync.addHandler(HTTP2FramePayloadToHTTP1ServerCodec())
                try sync.addHandler(
                    HTTPProxyHandler(direction: direction, loop: loop, connectionGuard: guardHandler, multiplexed: true))
            }
        }
        try sync.addHandler(manager)
        try sync.addHandler(HTTP2ConnectionErrorHandler(direction: direction, shared: loop.shared))
    }
}

/// Last handler of a downstream HTTP/2 connection: root-stream frames end here; the client's EOF
/// closes the connection; a connection-level
/// protocol error (bad preface, malformed frames, too-large header lists...) is logged and counted
/// (`meshd_errors_total{kind="bad-request"}`) — NIO's handler has already sent GOAWAY — and the
/// connection closed.
final class HTTP2ConnectionErrorHandler: ChannelInboundHandler {
    typealias InboundIn = HTTP2Frame

    let direction: Direction
    let shared: SharedRuntime
    private var reported = false

    init(direction: Direction, shared: SharedRuntime) {
        self.direction = direction
        self.shared = shared
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {}

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        // The listener keeps a client's EOF as an event (for opaque TCP); HTTP/2 has no half-closed
        // connection: the client is gone, and its streams with it.
        if let e = event as? ChannelEvent, case .inputClosed = e {
            context.close(promise: nil)
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        // One stream's error (NIO has reset that stream) leaves the connection and its other streams alone.
        if HTTP2Errors.isStreamLevel(error) { return }
        if !reported && !(error is IOError) {
            reported = true
            shared.metrics.error(.badRequest, direction).increment()
            if let left = shared.protocolErrorLog.admit() {
                shared.logger.info(
                    "malformed HTTP/2 connection",
                    metadata: [
                        "direction": "\(direction.label)", "error": "\(error)",
                        "client": "\(context.channel.remoteAddress?.description ?? "?")", "suppressed": "\(left)",
                    ])
            }
        }
        HTTP2Errors.closeAfterFrameLoop(context)
    }
}
