import Logging
import MeshCore
import NIOCore
import NIOHPACK
import NIOHTTP1
import NIOHTTP2

/// The downstream side of an HTTP/2 connection (prior knowledge, h2c, or h2 over mTLS), on either
/// listener, at frame level: NIO's HTTP/2 handler without a stream multiplexer, its connection
/// manager (idle timeout, graceful GOAWAY), and `HTTP2DownstreamConnection`, which gives each stream
/// an `HTTPProxyHandler` — the same route → balance → endpoint path as HTTP/1.1, one request per
/// stream — without a child channel or an HTTP/1 codec.
///
/// Bounds: `http2.maxConcurrentStreams` streams per connection (SETTINGS; the client must wait),
/// `http2.initialWindowSize` bytes of flow-control window per stream (credited only while the stream's
/// upstream takes what it got, so the client of a slow upstream stops sending), the connection's
/// window one stream window per stream (credited as DATA arrives), `http.maxHeaderBytes` per header
/// list; `http.idleTimeout` closes a connection without streams (GOAWAY first); a graceful drain sends
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
        connection.maximumRecentlyResetStreams = config.http2.recentlyResetStreams
        // meshd checks the blocks it receives as it reads them (`HTTP2FieldCheck`).
        connection.headerBlockValidation = .disabled
        var stream = NIOHTTP2Handler.StreamConfiguration()
        stream.streamResetFrameRateLimit.maximumCount = config.http2.maxResetStreams
        let manager = NIOHTTP2ServerConnectionManagementHandler(
            eventLoop: channel.eventLoop,
            configuration: .init(
                maxIdleTime: .nanoseconds(config.http.idleTimeout.nanoseconds), maxAge: nil,
                maxGraceTime: .nanoseconds(config.drainTimeout.nanoseconds), keepalive: nil))
        connectionGuard.prematureResets = PrematureResetLimiter(limit: config.http2.maxPrematureResets)
        connectionGuard.watchHTTP2(
            loop: loop, idleTimeout: config.http.idleTimeout, firstRequestTimeout: config.http.headerReadTimeout)
        try sync.addHandler(NIOHTTP2Handler(mode: .server, connectionConfiguration: connection, streamConfiguration: stream))
        try sync.addHandler(HTTP2WindowEventFilter())
        try sync.addHandler(manager)
        try sync.addHandler(
            HTTP2DownstreamConnection(
                direction: direction, loop: loop, connectionGuard: connectionGuard, streamWindow: config.http2.initialWindowSize,
                maxStreams: config.http2.maxConcurrentStreams))
        try sync.addHandler(HTTP2ConnectionErrorHandler(direction: direction, shared: loop.shared))
    }
}

/// The streams of one downstream HTTP/2 connection, at frame level: a new stream's HEADERS, checked
/// (`HTTP2Conversion.request`), start the request of a new `HTTPProxyHandler` as they came, its DATA
/// and trailers are the rest of the request; what the handler answers becomes HEADERS (the head — an
/// HTTP/2 upstream's block as it came, or an HTTP/1 head converted — coalesced with END_STREAM when
/// nothing follows: a trailers-only gRPC response is one frame), DATA (the last one held until the
/// next part, so that it carries END_STREAM) and trailers. NIO's handler has checked the frame
/// sequence of every stream before this sees it; meshd checks the header blocks (`HTTP2FieldCheck`).
///
/// Flow control is meshd's: the connection's window is raised to one stream window per stream and
/// credited as DATA arrives (one stream never stalls the others); a stream's as its handler takes the
/// bytes on (`HTTPProxyHandler.wantsRequestBytes`). A stream whose response DATA waits (the client's
/// window or socket) past `streamHighWater` bytes reports itself unwritable to its handler.
final class HTTP2DownstreamConnection: ChannelInboundHandler, HeldFlush {
    typealias InboundIn = HTTP2Frame
    typealias OutboundOut = HTTP2Frame

    let direction: Direction
    let loop: LoopContext
    let connectionGuard: ConnectionGuard
    let streamWindow: Int
    private let connectionWindow: Int
    private var context: ChannelHandlerContext?
    private var streams: [HTTP2StreamID: HTTPProxyHandler] = [:]
    /// Streams that received frames in the current read (told when it ends).
    private var touched: [HTTPProxyHandler] = []
    private var connectionUncredited = 0
    private var raisedWindow = false
    private var pending = PendingFlush()

    static let streamHighWater = 64 * 1024
    static let streamLowWater = 32 * 1024

    init(direction: Direction, loop: LoopContext, connectionGuard: ConnectionGuard, streamWindow: Int, maxStreams: Int) {
        self.direction = direction
        self.loop = loop
        self.connectionGuard = connectionGuard
        self.streamWindow = streamWindow
        self.connectionWindow = streamWindow * maxStreams
    }

    func handlerAdded(context: ChannelHandlerContext) { self.context = context }
    func handlerRemoved(context: ChannelHandlerContext) { self.context = nil }

    // MARK: - Frames from the client

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let frame = unwrapInboundIn(data)
        switch frame.payload {
        case .headers(let block):
            if let handler = streams[frame.streamID] {
                // Trailers (NIO has checked they end the stream).
                let trailers: HTTPHeaders
                do {
                    trailers = try HTTP2Conversion.httpTrailers(block.headers)
                } catch {
                    // The stream's handler hears of the reset from its StreamClosedEvent.
                    malformed(frame.streamID, error, context: context)
                    return
                }
                handler.h2.receivedEnd = true
                touch(handler)
                handler.handle(.end(trailers), context: context)
                return
            }
            openStream(frame.streamID, block, context: context)
        case .data(let data):
            let bytes = data.data.readableBytes + (data.paddingBytes ?? 0)
            connectionUncredited += bytes
            guard let handler = streams[frame.streamID], case .byteBuffer(let buffer) = data.data else { return }
            touch(handler)
            if data.endStream {
                handler.h2.receivedEnd = true
            } else {
                handler.h2.uncredited += bytes
            }
            if buffer.readableBytes > 0 { handler.handle(.body(buffer), context: context) }
            if data.endStream {
                handler.handle(.end(nil), context: context)
            } else if handler.h2.uncredited >= streamWindow / 2 && streams[frame.streamID] === handler {
                if handler.wantsRequestBytes {
                    sendCredit(handler, context: context)
                } else {
                    handler.readPending = true
                }
            }
        case .settings(.settings):
            if !raisedWindow {
                // The client's preface: the connection's window (65 535 bytes so far) grows to one
                // stream window per stream.
                raisedWindow = true
                let increment = connectionWindow - 65_535
                if increment > 0 {
                    context.write(
                        wrapOutboundOut(HTTP2Frame(streamID: .rootStream, payload: .windowUpdate(windowSizeIncrement: increment))),
                        promise: nil)
                    pending.needed = true
                }
            }
        default:
            // RST_STREAM: its StreamClosedEvent follows. PING, SETTINGS ACK, GOAWAY...: NIO's and the
            // connection manager's.
            break
        }
    }

    private func openStream(_ id: HTTP2StreamID, _ block: HTTP2Frame.FramePayload.Headers, context: ChannelHandlerContext) {
        let request: H2Request
        do {
            request = try HTTP2Conversion.request(block.headers, endStream: block.endStream)
        } catch {
            malformed(id, error, context: context)
            return
        }
        let handler = HTTPProxyHandler(direction: direction, loop: loop, connectionGuard: connectionGuard, frames: self)
        handler.h2.id = id
        streams[id] = handler
        handler.streamOpened(context: context)
        touch(handler)
        handler.startRequest(request, context: context)
        if block.endStream {
            handler.h2.receivedEnd = true
            if streams[id] === handler { handler.handle(.end(nil), context: context) }
        }
    }

    /// A malformed block (RFC 9113 §8.1.1): a stream error, counted as a bad request and logged
    /// (rate-limited), the connection's other streams untouched.
    private func malformed(_ id: HTTP2StreamID, _ problem: HTTP2FieldCheck.Problem, context: ChannelHandlerContext) {
        loop.shared.metrics.error(.badRequest, direction).increment()
        if let left = loop.shared.protocolErrorLog.admit() {
            loop.shared.logger.info(
                "malformed HTTP/2 request",
                metadata: [
                    "direction": "\(direction.label)", "stream": "\(Int(id))", "error": "\(problem)",
                    "client": "\(context.channel.remoteAddress?.description ?? "?")", "suppressed": "\(left)",
                ])
        }
        context.write(wrapOutboundOut(HTTP2Frame(streamID: id, payload: .rstStream(.protocolError))), promise: nil)
        pending.needed = true
    }

    private func touch(_ handler: HTTPProxyHandler) {
        if !handler.h2.touched {
            handler.h2.touched = true
            touched.append(handler)
        }
    }

    private func sendCredit(_ handler: HTTPProxyHandler, context: ChannelHandlerContext) {
        guard let id = handler.h2.id else { return }
        context.write(
            wrapOutboundOut(HTTP2Frame(streamID: id, payload: .windowUpdate(windowSizeIncrement: handler.h2.uncredited))), promise: nil)
        handler.h2.uncredited = 0
        pending.needed = true
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        if connectionUncredited >= connectionWindow / 4 || (connectionUncredited > 0 && connectionWindow < 4 * 65_535) {
            context.write(
                wrapOutboundOut(HTTP2Frame(streamID: .rootStream, payload: .windowUpdate(windowSizeIncrement: connectionUncredited))),
                promise: nil)
            connectionUncredited = 0
            pending.needed = true
        }
        if !touched.isEmpty {
            for handler in touched {
                handler.h2.touched = false
                handler.streamReadComplete()
            }
            touched.removeAll(keepingCapacity: true)
        }
        if pending.take() { context.flush() }
        context.fireChannelReadComplete()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        // (A type check first: a dynamic cast of every event costs more.)
        if type(of: event) == StreamClosedEvent.self, let closed = event as? StreamClosedEvent {
            if let handler = streams.removeValue(forKey: closed.streamID) {
                handler.h2.closed = true
                handler.streamClosed()
            }
        }
        context.fireUserInboundEventTriggered(event)
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable {
            for handler in streams.values where handler.h2.queued < Self.streamHighWater { handler.streamWritable() }
        }
        context.fireChannelWritabilityChanged()
    }

    func channelInactive(context: ChannelHandlerContext) {
        let all = streams
        streams.removeAll()
        for handler in all.values where !handler.h2.closed {
            handler.h2.closed = true
            handler.streamClosed()
        }
        context.fireChannelInactive()
    }

    // MARK: - A stream's response (called by its handler)

    func respond(_ part: HTTPServerResponsePart, on handler: HTTPProxyHandler) {
        guard let context, let id = handler.h2.id, !handler.h2.closed, !handler.h2.sentEnd else { return }
        // The flush is held before the first write: a stream that this write ends can make NIO's
        // connection manager queue the connection's close (when it drains), which must come after the
        // flush (`FlushBatch` queues the end of the pass before it).
        pending.holdAhead(self, in: loop.flushes)
        switch part {
        case .head(let head):
            let block = HTTP2Conversion.responseHeaders(head)
            if head.status.code < 200 {
                // An interim response (100 Continue) goes at once, and a final one follows.
                context.write(wrapOutboundOut(HTTP2Frame(streamID: id, payload: .headers(.init(headers: block)))), promise: nil)
            } else {
                handler.h2.head = block
            }
        case .body(let body):
            guard case .byteBuffer(let buffer) = body, buffer.readableBytes > 0 else { return }
            sendHead(handler, id: id, endStream: false, context: context)
            sendData(handler, id: id, endStream: false, context: context)
            // Held until the next part: the last one carries END_STREAM.
            handler.h2.data = buffer
            handler.h2.queued += buffer.readableBytes
        case .end(let trailers):
            handler.h2.sentEnd = true
            if let trailers, !trailers.isEmpty {
                sendHead(handler, id: id, endStream: false, context: context)
                sendData(handler, id: id, endStream: false, last: true, context: context)
                context.write(
                    wrapOutboundOut(
                        HTTP2Frame(streamID: id, payload: .headers(.init(headers: HTTP2Conversion.trailers(trailers), endStream: true)))),
                    promise: nil)
            } else if handler.h2.data != nil {
                sendData(handler, id: id, endStream: true, last: true, context: context)
            } else if handler.h2.head != nil {
                sendHead(handler, id: id, endStream: true, context: context)
            } else {
                context.write(
                    wrapOutboundOut(HTTP2Frame(streamID: id, payload: .data(.init(data: .byteBuffer(ByteBuffer()), endStream: true)))),
                    promise: nil)
            }
        }
        pending.needed = true
    }

    /// A final response's HEADERS block as an HTTP/2 upstream sent it (`HTTP2Conversion.clientBlock`),
    /// held like a converted head's.
    func respond(head block: HPACKHeaders, on handler: HTTPProxyHandler) {
        guard context != nil, handler.h2.id != nil, !handler.h2.closed, !handler.h2.sentEnd else { return }
        pending.holdAhead(self, in: loop.flushes)
        handler.h2.head = block
        pending.needed = true
    }

    private func sendHead(_ handler: HTTPProxyHandler, id: HTTP2StreamID, endStream: Bool, context: ChannelHandlerContext) {
        guard let block = handler.h2.head else { return }
        handler.h2.head = nil
        context.write(
            wrapOutboundOut(HTTP2Frame(streamID: id, payload: .headers(.init(headers: block, endStream: endStream)))), promise: nil)
    }

    /// The held DATA frame (its bytes already count as queued until NIO has sent them). The last one
    /// (`last`: the response's end, or trailers, follows at once) stops counting at once: nothing is
    /// written to the stream after it, so it goes without a write promise (about 4 k instructions).
    private func sendData(
        _ handler: HTTPProxyHandler, id: HTTP2StreamID, endStream: Bool, last: Bool = false, context: ChannelHandlerContext
    ) {
        guard let buffer = handler.h2.data else { return }
        handler.h2.data = nil
        let bytes = buffer.readableBytes
        var promise: EventLoopPromise<Void>?
        if last {
            handler.h2.queued -= bytes
        } else {
            promise = context.eventLoop.makePromise(of: Void.self)
            promise?.futureResult.assumeIsolated().whenComplete { [self] _ in self.dataLeft(handler, bytes: bytes) }
        }
        context.write(
            wrapOutboundOut(HTTP2Frame(streamID: id, payload: .data(.init(data: .byteBuffer(buffer), endStream: endStream)))),
            promise: promise)
    }

    /// Sends what `handler` wrote (a response head waiting for its END_STREAM goes now, without); the
    /// flush waits for the end of a read in progress on this loop (`FlushBatch`).
    func flush(_ handler: HTTPProxyHandler) {
        guard let context else { return }
        if handler.h2.head != nil || handler.h2.data != nil, let id = handler.h2.id, !handler.h2.closed {
            sendHead(handler, id: id, endStream: false, context: context)
            sendData(handler, id: id, endStream: false, context: context)
            pending.needed = true
        }
        flushOrHold()
    }

    private func flushOrHold() {
        if pending.flushNow(self, in: loop.flushes) { context?.flush() }
    }

    func flushHeld() {
        if pending.released() { context?.flush() }
    }

    private func dataLeft(_ handler: HTTPProxyHandler, bytes: Int) {
        let before = handler.h2.queued
        handler.h2.queued -= bytes
        if before >= Self.streamLowWater && handler.h2.queued < Self.streamLowWater, !handler.h2.closed,
            context?.channel.isWritable == true
        {
            handler.streamWritable()
        }
    }

    func isWritable(_ handler: HTTPProxyHandler) -> Bool {
        handler.h2.queued < Self.streamHighWater && (context?.channel.isWritable ?? false)
    }

    /// The handler takes more of the request: the client may send another window.
    func credit(_ handler: HTTPProxyHandler) {
        guard let context, handler.h2.uncredited > 0, !handler.h2.receivedEnd, !handler.h2.closed else { return }
        sendCredit(handler, context: context)
        flushOrHold()
    }

    /// The handler is done with the stream before both of its ends are: RST_STREAM(CANCEL). Either
    /// way the handler hears the stream closed, now.
    func close(_ handler: HTTPProxyHandler) {
        guard !handler.h2.closed, let id = handler.h2.id else { return }
        handler.h2.closed = true
        if streams[id] === handler { streams[id] = nil }
        if !(handler.h2.sentEnd && handler.h2.receivedEnd), let context {
            context.writeAndFlush(wrapOutboundOut(HTTP2Frame(streamID: id, payload: .rstStream(.cancel))), promise: nil)
        }
        handler.streamClosed()
    }
}

/// Right after NIO's HTTP/2 handler at frame level: NIO fires a `NIOHTTP2WindowUpdatedEvent` on every
/// flow-control change (several per stream), which nothing after it uses — meshd keeps its own
/// counts — and each cost every later handler's event checks a dynamic cast (about 10 k instructions
/// per stream). They end here.
final class HTTP2WindowEventFilter: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTP2Frame

    func channelRead(context: ChannelHandlerContext, data: NIOAny) { context.fireChannelRead(data) }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if type(of: event) == NIOHTTP2WindowUpdatedEvent.self { return }
        context.fireUserInboundEventTriggered(event)
    }
}

/// The per-stream state of a downstream HTTP/2 stream (`HTTPProxyHandler.h2`).
struct DownstreamStreamState {
    var id: HTTP2StreamID?
    /// The response head as a HEADERS block, until it is written (with END_STREAM if nothing follows).
    var head: HPACKHeaders?
    /// The last response DATA, until the next part or a flush (then with END_STREAM if it is the end).
    var data: ByteBuffer?
    var receivedEnd = false
    var sentEnd = false
    /// Closed at NIO, reset, or its connection gone: the handler has heard.
    var closed = false
    /// Response DATA bytes written and not yet sent.
    var queued = 0
    /// Request DATA bytes received and not yet credited back to the client.
    var uncredited = 0
    var touched = false
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
        if type(of: event) == ChannelEvent.self, let e = event as? ChannelEvent, case .inputClosed = e {
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
