import Logging
import MeshCore
import NIOCore
import NIOHPACK
import NIOHTTP1
import NIOHTTP2
import NIOPosix

/// One multiplexed HTTP/2 (h2c, prior knowledge, or h2 over mTLS) connection to an endpoint, owned by
/// one event loop's `UpstreamPool`, at frame level: NIO's HTTP/2 handler without a stream multiplexer,
/// and this handler after it sees every frame of every stream. A request's stream is an
/// `UpstreamConnection` (`isStream`) that the proxy handler drives as it drives an HTTP/1.1
/// connection; its parts become frames here (`HTTP2Conversion`) and the endpoint's frames become
/// response parts, with no child channel and no HTTP/1 codec per stream. A request head and its last
/// DATA are held until the next part or a flush, so that a GET is one HEADERS frame with END_STREAM
/// and a unary call's body carries it.
///
/// Streams are created in order as their HEADERS are written (the stream id is taken then), and never
/// more at once than the endpoint allows (SETTINGS_MAX_CONCURRENT_STREAMS, at most
/// `http2.maxConcurrentStreams`): a stream asked for beyond that waits here for one to close, so NIO
/// never holds HEADERS back (a RST_STREAM that overtook held HEADERS once cost meshd whole
/// connections; docs/architecture.md).
///
/// Flow control is meshd's: the connection's window is credited as DATA arrives (one slow stream
/// never stalls the others), a stream's only while its client takes what it was given, so what a
/// stream whose client stopped reading can hold is one window (`upstreamStreamWindow`). A stream's
/// request DATA that the endpoint's window holds back makes the stream unwritable past
/// `streamHighWater` bytes: the client's reads stop.
///
/// Bounds: streams as above; `http2.maxConnectionsPerEndpoint` connections per endpoint and loop
/// (then streams wait, bounded by the service's `maxPending`); per stream, one window received and
/// `streamHighWater` bytes queued to send.
final class HTTP2UpstreamConnection: ChannelInboundHandler, HeldFlush {
    typealias InboundIn = HTTP2Frame
    typealias OutboundOut = HTTP2Frame

    let address: SocketAddress
    let shared: SharedRuntime
    let counters: ServiceCounters?
    /// The window meshd grants the endpoint per stream.
    let streamWindow: Int
    private var context: ChannelHandlerContext?
    /// Streams handed out (open at the endpoint, or about to be).
    private(set) var streams = 0
    /// Streams whose HEADERS went out, by id.
    private var open: [HTTP2StreamID: UpstreamConnection] = [:]
    private var nextStreamID: Int32 = 1
    /// Which requests index their tracing headers, so the names stay in HPACK's dynamic table.
    private var priming = HeaderNamePriming()
    /// What this side allows, lowered to the peer's SETTINGS_MAX_CONCURRENT_STREAMS when it says so.
    private(set) var maxStreams: Int
    private let configuredMaxStreams: Int
    /// GOAWAY received or the connection failed: no new streams.
    private(set) var draining = false
    /// The last stream id of the endpoint's (latest) GOAWAY: streams above it were never processed.
    private var goAwayLastStreamID: HTTP2StreamID?
    private(set) var ready = false
    private var connectDone = false
    /// `channelActive` passed NIO's handler, which sent the preface then.
    private var prefaceSent = false
    /// Streams asked for before the connection was up, or while all of its streams were taken.
    private var waiting = CircularBuffer<EventLoopPromise<UpstreamConnection>>(initialCapacity: 0)
    /// Streams that received frames in the current read (told when it ends).
    private var touched: [UpstreamConnection] = []
    private var connectionUncredited = 0
    private var pending = PendingFlush()
    /// The loop's held flushes: this connection's read holds others' flushes, and a stream's flush
    /// waits for the read in progress (`FlushBatch`).
    let flushes: FlushBatch
    private var reading = false
    var idleSince = NIODeadline.now()
    weak var pool: UpstreamPool?

    /// Request bytes a stream may have queued (written, held back by the endpoint's window) before it
    /// reports itself unwritable, and the level at which it is writable again.
    static let streamHighWater = 64 * 1024
    static let streamLowWater = 32 * 1024

    init(
        address: SocketAddress, shared: SharedRuntime, counters: ServiceCounters?, maxStreams: Int, streamWindow: Int,
        flushes: FlushBatch = FlushBatch()
    ) {
        self.flushes = flushes
        self.address = address
        self.shared = shared
        self.counters = counters
        self.maxStreams = maxStreams
        self.configuredMaxStreams = maxStreams
        self.streamWindow = streamWindow
    }

    var hasCapacity: Bool { !draining && streams + waiting.count < maxStreams }
    var isIdle: Bool { streams == 0 && waiting.isEmpty }
    /// Streams handed out or waiting (the pool picks the least loaded connection).
    var load: Int { streams + waiting.count }
    private var connectionWindow: Int { streamWindow * configuredMaxStreams }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        // Added to an active channel, NIO's handler (before this one) sent the preface as it was added.
        prefaceSent = context.channel.isActive
    }
    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
        endRead()
    }

    private func endRead() {
        guard reading else { return }
        reading = false
        flushes.readEnded()
    }

    /// The TCP connection is up (and mTLS verified): streams waiting for it start once NIO's handler
    /// has sent the connection preface (NIO completes a connect before the channel's `channelActive`
    /// reaches the handlers).
    func connected() {
        connectDone = true
        guard let context, context.channel.isActive else {
            failed(ChannelError.ioOnClosedChannel)
            return
        }
        if prefaceSent { becomeReady(context: context) }
    }

    func channelActive(context: ChannelHandlerContext) {
        prefaceSent = true
        if connectDone { becomeReady(context: context) }
        context.fireChannelActive()
    }

    private func becomeReady(context: ChannelHandlerContext) {
        guard !ready, !draining else { return }
        ready = true
        shared.metrics.upstreamConnectionsOpen.increment()
        counters?.connections.wrappingIncrement(ordering: .relaxed)
        // The connection's window starts at the protocol's 65 535 bytes: raised to one window per stream.
        let increment = connectionWindow - 65_535
        if increment > 0 {
            context.writeAndFlush(
                wrapOutboundOut(HTTP2Frame(streamID: .rootStream, payload: .windowUpdate(windowSizeIncrement: increment))), promise: nil)
        }
        grantWaiting()
    }

    /// Connecting failed: every stream waiting for this connection fails with `error`.
    func failed(_ error: Error) {
        draining = true
        failWaiting(error)
        pool?.removeHTTP2(self)
    }

    private func failWaiting(_ error: Error) {
        guard !waiting.isEmpty else { return }
        let queued = waiting
        waiting.removeAll()
        shared.metrics.upstreamHTTP2StreamsOpen.decrement(by: Double(queued.count))
        for promise in queued { promise.fail(error) }
    }

    /// A new stream, as an `UpstreamConnection` the proxy handler writes the request to.
    func openStream(on eventLoop: EventLoop) -> EventLoopFuture<UpstreamConnection> {
        if let stream = takeStream() { return eventLoop.assumeIsolated().makeSucceededFuture(stream) }
        shared.metrics.upstreamHTTP2StreamsOpen.increment()
        let promise = eventLoop.makePromise(of: UpstreamConnection.self)
        waiting.append(promise)
        return promise.futureResult
    }

    /// A stream at once, when the connection is ready and has a free one that no earlier stream waits
    /// for.
    func takeStream() -> UpstreamConnection? {
        guard ready && !draining && streams < maxStreams && waiting.isEmpty else { return nil }
        shared.metrics.upstreamHTTP2StreamsOpen.increment()
        streams += 1
        return UpstreamConnection(stream: self)
    }

    private func grantWaiting() {
        while ready && !draining && streams < maxStreams, let promise = waiting.popFirst() {
            streams += 1
            promise.assumeIsolated().succeed(UpstreamConnection(stream: self))
        }
    }

    func close() {
        draining = true
        failWaiting(ChannelError.ioOnClosedChannel)
        context?.close(promise: nil)
    }

    // MARK: - A stream's request (called by its `UpstreamConnection`)

    func isWritable(_ s: UpstreamConnection) -> Bool {
        s.h2.queued < Self.streamHighWater && (context?.channel.isWritable ?? false)
    }

    /// A stream's request head, held until the next part (the HEADERS carry END_STREAM when nothing
    /// follows): an HTTP/2 client's block as the proxy handler rewrote it, or an HTTP/1.1 head
    /// translated. Either way, one request in `HeaderNamePriming.interval` indexes the per-request
    /// headers' names.
    func send(head: UpstreamRequestHead, on s: UpstreamConnection) {
        guard canSend(s) else { return }
        switch head {
        case .http1(let head):
            s.h2.head = HTTP2Conversion.requestHeaders(head, primeNames: priming.next())
        case .h2(let block):
            s.h2.head = priming.next() ? HTTP2Conversion.primed(block) : block
        }
    }

    /// Whether a stream's part can be written now. The connection went away under a stream not yet
    /// sent: its owner hears of it after this write returns.
    private func canSend(_ s: UpstreamConnection) -> Bool {
        guard !s.h2.finished, !s.h2.sentEnd else { return false }
        guard ready, let context, context.channel.isActive else {
            if !s.h2.finished {
                context?.eventLoop.assumeIsolated().execute { [self] in self.finish(s, error: ChannelError.ioOnClosedChannel) }
            }
            return false
        }
        return true
    }

    func send(_ part: HTTPClientRequestPart, on s: UpstreamConnection) {
        guard canSend(s), let context else { return }
        switch part {
        case .head(let head):
            send(head: .http1(head), on: s)
        case .body(let body):
            guard case .byteBuffer(let buffer) = body, buffer.readableBytes > 0 else { return }
            sendHead(s, endStream: false, context: context)
            sendData(s, endStream: false, context: context)
            // Held until the next part: the last one carries END_STREAM.
            s.h2.data = buffer
            s.h2.queued += buffer.readableBytes
        case .end(let trailers):
            if let trailers, !trailers.isEmpty {
                sendHead(s, endStream: false, context: context)
                sendData(s, endStream: false, last: true, context: context)
                guard let id = s.h2.id else { return }
                let block = HTTP2Conversion.trailers(trailers)
                context.write(
                    wrapOutboundOut(HTTP2Frame(streamID: id, payload: .headers(.init(headers: block, endStream: true)))), promise: nil)
            } else if s.h2.data != nil {
                sendData(s, endStream: true, last: true, context: context)
            } else if s.h2.head != nil {
                sendHead(s, endStream: true, context: context)
            } else if let id = s.h2.id {
                context.write(
                    wrapOutboundOut(HTTP2Frame(streamID: id, payload: .data(.init(data: .byteBuffer(ByteBuffer()), endStream: true)))),
                    promise: nil)
            }
            s.h2.sentEnd = true
            pending.needed = true
        }
    }

    func flush(_ s: UpstreamConnection) {
        if let context, s.h2.head != nil || s.h2.data != nil {
            sendHead(s, endStream: false, context: context)
            sendData(s, endStream: false, context: context)
        }
        if pending.flushNow(self, in: flushes) { context?.flush() }
    }

    func flushHeld() {
        if pending.released() { context?.flush() }
    }

    /// The held DATA frame (its bytes count as queued from the moment it is written to this stream
    /// until NIO has sent them).
    /// The last one (`last`: the request's end, or trailers, follows at once) stops counting at once:
    /// nothing is written to the stream after it, so it goes without a write promise.
    private func sendData(_ s: UpstreamConnection, endStream: Bool, last: Bool = false, context: ChannelHandlerContext) {
        guard let buffer = s.h2.data, let id = s.h2.id else { return }
        s.h2.data = nil
        let bytes = buffer.readableBytes
        var promise: EventLoopPromise<Void>?
        if last {
            s.h2.queued -= bytes
        } else {
            promise = context.eventLoop.makePromise(of: Void.self)
            promise?.futureResult.assumeIsolated().whenComplete { [self] _ in self.dataLeft(s, bytes: bytes) }
        }
        context.write(
            wrapOutboundOut(HTTP2Frame(streamID: id, payload: .data(.init(data: .byteBuffer(buffer), endStream: endStream)))),
            promise: promise)
        pending.needed = true
    }

    /// The request's HEADERS (with END_STREAM when nothing follows): the stream gets its id now.
    private func sendHead(_ s: UpstreamConnection, endStream: Bool, context: ChannelHandlerContext) {
        guard let block = s.h2.head else { return }
        s.h2.head = nil
        let id = HTTP2StreamID(nextStreamID)
        nextStreamID &+= 2
        if nextStreamID > Int32.max - 2 || nextStreamID < 0 {
            // Stream ids run out (2^30 streams): this is the connection's last stream.
            draining = true
            pool?.removeHTTP2(self)
        }
        s.h2.id = id
        open[id] = s
        // NIO's stream state refuses the HEADERS (the stream cannot open, a content-length that
        // cannot hold...): the stream fails (an error raised inside NIO's write is not reported
        // otherwise).
        let promise = context.eventLoop.makePromise(of: Void.self)
        promise.futureResult.assumeIsolated().whenFailure { [self] error in
            if self.open[id] === s { self.open[id] = nil }
            self.finish(s, error: error)
        }
        context.write(
            wrapOutboundOut(HTTP2Frame(streamID: id, payload: .headers(.init(headers: block, endStream: endStream)))), promise: promise)
        pending.needed = true
    }

    private func dataLeft(_ s: UpstreamConnection, bytes: Int) {
        let before = s.h2.queued
        s.h2.queued -= bytes
        // Crossing the low-water mark: a stream that reported itself unwritable (above the high-water
        // mark) is writable again (a stream that never was ignores it).
        if before >= Self.streamLowWater && s.h2.queued < Self.streamLowWater, let owner = s.owner,
            context?.channel.isWritable == true
        {
            owner.upstreamWritabilityChanged(writable: true, from: s)
        }
    }

    /// The stream's client took what it was given: the endpoint may send another window.
    func resume(_ s: UpstreamConnection) {
        guard s.h2.uncredited > 0, !s.h2.receivedEnd, !s.h2.finished, let id = s.h2.id, let context else { return }
        context.writeAndFlush(
            wrapOutboundOut(HTTP2Frame(streamID: id, payload: .windowUpdate(windowSizeIncrement: s.h2.uncredited))), promise: nil)
        s.h2.uncredited = 0
    }

    /// The proxy handler is done with a stream before its end: RST_STREAM(CANCEL) if it was opened.
    func cancel(_ s: UpstreamConnection) {
        s.owner = nil
        guard !s.h2.finished else { return }
        guard let id = s.h2.id else {
            s.h2.head = nil
            s.h2.data = nil
            finish(s, error: nil)
            return
        }
        if s.h2.sentEnd && s.h2.receivedEnd { return }  // closed at NIO: its event is on the way
        context?.writeAndFlush(wrapOutboundOut(HTTP2Frame(streamID: id, payload: .rstStream(.cancel))), promise: nil)
    }

    /// A stream is over (closed at NIO, refused, or never sent): its slot goes to a waiting one, and an
    /// owner still waiting for the response hears why.
    private func finish(_ s: UpstreamConnection, error: Error?) {
        guard !s.h2.finished else { return }
        s.h2.finished = true
        streams -= 1
        shared.metrics.upstreamHTTP2StreamsOpen.decrement()
        if let owner = s.owner, !s.h2.receivedEnd {
            s.owner = nil
            owner.upstreamClosed(error: error, from: s)
        }
        grantWaiting()
        if streams == 0 {
            idleSince = .now()
            if draining { close() }
        }
    }

    // MARK: - Channel events

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if !reading {
            reading = true
            flushes.readStarted()
        }
        let frame = unwrapInboundIn(data)
        switch frame.payload {
        case .headers(let headers):
            guard let s = open[frame.streamID], !s.h2.receivedEnd else { return }
            received(headers, on: s, context: context)
        case .data(let data):
            let bytes = data.data.readableBytes + (data.paddingBytes ?? 0)
            connectionUncredited += bytes
            guard let s = open[frame.streamID], !s.h2.receivedEnd, case .byteBuffer(let buffer) = data.data else { return }
            guard s.h2.gotHead else {
                protocolError(on: s, "DATA before the response head", context: context)
                return
            }
            if data.endStream { s.h2.receivedEnd = true } else { s.h2.uncredited += bytes }
            if let owner = s.owner {
                touch(s)
                if buffer.readableBytes > 0 { owner.upstreamRead(.body(buffer), from: s) }
                if data.endStream {
                    owner.upstreamRead(.end(nil), from: s)
                } else if s.h2.uncredited >= streamWindow / 2 && owner.downstreamWritable {
                    context.write(
                        wrapOutboundOut(HTTP2Frame(streamID: frame.streamID, payload: .windowUpdate(windowSizeIncrement: s.h2.uncredited))),
                        promise: nil)
                    s.h2.uncredited = 0
                    pending.needed = true
                }
            }
        case .settings(.settings(let settings)):
            for setting in settings where setting.parameter == .maxConcurrentStreams {
                maxStreams = min(configuredMaxStreams, max(setting.value, 1))
            }
            grantWaiting()
        case .goAway(let lastStreamID, _, _):
            // The endpoint takes no new streams: the ones open finish (NIO closes those it did not take),
            // new ones go elsewhere.
            goAwayLastStreamID = lastStreamID
            draining = true
            pool?.removeHTTP2(self)
            failWaiting(ChannelError.ioOnClosedChannel)
            if streams == 0 { context.close(promise: nil) }
        default:
            break
        }
    }

    private func received(_ block: HTTP2Frame.FramePayload.Headers, on s: UpstreamConnection, context: ChannelHandlerContext) {
        if s.h2.gotHead {
            // Trailers (NIO has checked they end the stream).
            let trailers: HTTPHeaders
            do {
                trailers = try HTTP2Conversion.httpTrailers(block.headers)
            } catch {
                protocolError(on: s, "\(error)", context: context)
                return
            }
            s.h2.receivedEnd = true
            guard let owner = s.owner else { return }
            touch(s)
            owner.upstreamRead(.end(trailers), from: s)
            return
        }
        let response: H2Response
        do {
            response = try HTTP2Conversion.response(block.headers, endStream: block.endStream)
        } catch {
            protocolError(on: s, "\(error)", context: context)
            return
        }
        // An interim response (103 Early Hints...) is not passed on: the proxy answers its client with
        // one head.
        if response.status < 200 { return }
        s.h2.gotHead = true
        if block.endStream { s.h2.receivedEnd = true }
        guard let owner = s.owner else { return }
        touch(s)
        owner.upstreamHead(.h2(response), from: s)
        if block.endStream { s.owner?.upstreamRead(.end(nil), from: s) }
    }

    private func protocolError(on s: UpstreamConnection, _ what: String, context: ChannelHandlerContext) {
        guard let id = s.h2.id else { return }
        shared.logger.info("malformed HTTP/2 response", metadata: ["target": "\(address)", "error": "\(what)"])
        context.writeAndFlush(wrapOutboundOut(HTTP2Frame(streamID: id, payload: .rstStream(.protocolError))), promise: nil)
        let owner = s.owner
        s.owner = nil
        owner?.upstreamClosed(error: UpstreamHTTP2Error.malformedResponse(what), from: s)
    }

    private func touch(_ s: UpstreamConnection) {
        if !s.h2.touched {
            s.h2.touched = true
            touched.append(s)
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        if connectionUncredited >= connectionWindow / 4 {
            context.write(
                wrapOutboundOut(HTTP2Frame(streamID: .rootStream, payload: .windowUpdate(windowSizeIncrement: connectionUncredited))),
                promise: nil)
            connectionUncredited = 0
            pending.needed = true
        }
        if !touched.isEmpty {
            for s in touched {
                s.h2.touched = false
                s.owner?.upstreamReadComplete(from: s)
            }
            touched.removeAll(keepingCapacity: true)
        }
        if pending.take() { context.flush() }
        context.fireChannelReadComplete()
        // The responses of this read go out, one write per client connection.
        endRead()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        // (A type check first: a dynamic cast of each of NIO's many window events costs more.)
        let type = type(of: event)
        if type == StreamClosedEvent.self, let closed = event as? StreamClosedEvent {
            guard let s = open.removeValue(forKey: closed.streamID) else { return }
            var reason = closed.reason
            if reason == .cancel, let last = goAwayLastStreamID, closed.streamID > last {
                // Above the last stream of the endpoint's GOAWAY: never processed (RFC 9113 §6.8). NIO's
                // frame-level handler reports these as CANCEL (it comes right after the GOAWAY frame).
                reason = .refusedStream
            }
            finish(s, error: reason.map { UpstreamHTTP2Error.reset($0) })
            return
        }
        // Window events (meshd keeps its own counts) and stream creations end here.
        if type == NIOHTTP2WindowUpdatedEvent.self || type == NIOHTTP2StreamCreatedEvent.self { return }
        context.fireUserInboundEventTriggered(event)
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable {
            for s in open.values where s.h2.queued < Self.streamHighWater {
                s.owner?.upstreamWritabilityChanged(writable: true, from: s)
            }
        }
        context.fireChannelWritabilityChanged()
    }

    func channelInactive(context: ChannelHandlerContext) {
        endRead()
        if ready {
            ready = false
            shared.metrics.upstreamConnectionsOpen.decrement()
            counters?.connections.wrappingDecrement(ordering: .relaxed)
        }
        draining = true
        pool?.removeHTTP2(self)
        failWaiting(ChannelError.ioOnClosedChannel)
        let all = open
        open.removeAll()
        for s in all.values { finish(s, error: ChannelError.eof) }
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        // A stream's error (NIO has reset that stream; its StreamClosedEvent follows) ends that stream
        // only. Anything else is a connection error: NIO has sent GOAWAY and the connection cannot
        // carry streams any more, so it leaves the pool and closes (its streams' owners hear of it and
        // answer or retry).
        if HTTP2Errors.isStreamLevel(error) { return }
        shared.logger.info("upstream HTTP/2 connection error", metadata: ["target": "\(address)", "error": "\(error)"])
        draining = true
        pool?.removeHTTP2(self)
        HTTP2Errors.closeAfterFrameLoop(context)
    }
}

/// Why an upstream HTTP/2 stream ended without its response.
enum UpstreamHTTP2Error: Error, CustomStringConvertible {
    /// RST_STREAM from the endpoint (`refusedStream` also for a stream above its GOAWAY's last stream:
    /// the endpoint never processed it).
    case reset(HTTP2ErrorCode)
    case malformedResponse(String)

    var description: String {
        switch self {
        case .reset(let code): return "stream reset (\(code))"
        case .malformedResponse(let what): return "malformed response: \(what)"
        }
    }
}

/// The per-stream state of an upstream HTTP/2 stream (`UpstreamConnection.h2`).
struct UpstreamStreamState {
    /// The request head as a HEADERS block, until it is written (with END_STREAM if nothing follows).
    var head: HPACKHeaders?
    /// The last request DATA, until the next part or a flush (then with END_STREAM if it is the end).
    var data: ByteBuffer?
    /// Set when the HEADERS are written.
    var id: HTTP2StreamID?
    var sentEnd = false
    var gotHead = false
    var receivedEnd = false
    /// Closed at NIO, refused, or never sent: the slot is given back.
    var finished = false
    /// Request DATA bytes written and not yet sent (the endpoint's window holds them).
    var queued = 0
    /// Response DATA bytes received and not yet credited back to the endpoint.
    var uncredited = 0
    var touched = false
}

extension UpstreamPool {
    /// A stream to `address` on a multiplexed HTTP/2 connection of this loop: an existing connection
    /// with a free stream, else a new connection (up to `http2.maxConnectionsPerEndpoint`), else the
    /// least busy one (its streams beyond the peer's limit wait in that connection for a free one).
    func openHTTP2Stream(
        _ address: SocketAddress, settings: HTTP2Config, maxHeaderBytes: Int, timeout: MeshDuration, counters: ServiceCounters?
    ) -> (future: EventLoopFuture<UpstreamConnection>, reused: Bool) {
        let list = http2[address] ?? []
        if let conn = list.first(where: { $0.hasCapacity }) {
            shared.metrics.upstreamPoolReuse.increment()
            return (conn.openStream(on: eventLoop), true)
        }
        if list.count >= settings.maxConnectionsPerEndpoint,
            let conn = list.filter({ !$0.draining }).min(by: { $0.load < $1.load })
        {
            return (conn.openStream(on: eventLoop), true)
        }
        let conn = HTTP2UpstreamConnection(
            address: address, shared: shared, counters: counters, maxStreams: settings.maxConcurrentStreams,
            streamWindow: Self.upstreamStreamWindow(settings.initialWindowSize), flushes: flushes)
        conn.pool = self
        http2[address, default: []].append(conn)
        let future = conn.openStream(on: eventLoop)
        connectHTTP2(conn, settings: settings, maxHeaderBytes: maxHeaderBytes, timeout: timeout)
        return (future, false)
    }

    /// The window meshd grants an endpoint per stream: a quarter of `http2.initialWindowSize` (at least
    /// the protocol's 65 535). meshd credits a stream only while its client takes what it is given, so
    /// a stream whose client stopped reading holds at most one window here, besides what waits in the
    /// client's write buffer; DATA frames are slices of the connection's read buffers and keep them
    /// alive whole (up to about twice their bytes), which the quarter keeps within the one window a
    /// stalled stream may cost (docs/reliability.md).
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
        connectionConfig.maximumRecentlyResetStreams = settings.recentlyResetStreams
        // meshd checks the blocks it receives as it reads them (`HTTP2FieldCheck`).
        connectionConfig.headerBlockValidation = .disabled
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
                    // Frame level: no stream multiplexer (see `HTTP2UpstreamConnection`).
                    try sync.addHandler(
                        NIOHTTP2Handler(mode: .client, connectionConfiguration: connection, streamConfiguration: stream))
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
                case .success:
                    shared.metrics.upstreamConnectsOK.increment()
                    conn.connected()
                case .failure(let error):
                    shared.metrics.upstreamConnectsFailed.increment()
                    conn.failed(error)
                }
            }
    }

    /// Whether a stream to `address` can go on an existing connection (no new connection needed).
    /// A stream on a ready connection to `address` that has a free one, without waiting: no future,
    /// no callback (the common case, once a loop has its connection to an endpoint).
    func leaseHTTP2Stream(_ address: SocketAddress) -> UpstreamConnection? {
        guard let list = http2[address] else { return nil }
        for conn in list {
            if let stream = conn.takeStream() {
                shared.metrics.upstreamPoolReuse.increment()
                return stream
            }
        }
        return nil
    }

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
