import NIOCore
import NIOHTTP1
import NIOHTTP2
import NIOPosix

/// One HTTP/2 connection of a worker, reused across reconnects.
final class H2Connection {
    enum State: Equatable {
        case disconnected
        /// TCP connect and HTTP/2 handshake in progress.
        case connecting
        /// Handshake done: new streams go here.
        case ready
        /// GOAWAY received: no new streams; closes after its last one.
        case draining
        /// Closing at the end of the run.
        case closing
    }

    unowned let worker: H2LoadWorker
    var state: State = .disconnected
    var channel: Channel?
    var multiplexer: NIOHTTP2Handler.StreamMultiplexer?
    var everConnected = false
    /// Counts connection attempts; events of an earlier attempt are ignored.
    var attempt = 0
    var handshakeTimer: Scheduled<Void>?
    /// Why the handshake of the current attempt failed, when known before the connection closed.
    var handshakeError: String?
    /// Completed when the current attempt is over (ready or failed); first attempts only.
    var attemptOver: EventLoopPromise<Void>?
    /// Unfinished streams of the current attempt.
    var active = 0
    /// The server's SETTINGS_MAX_CONCURRENT_STREAMS; until it says, NIO's own assumption (100).
    var maxStreams = H2Connection.defaultMaxStreams
    static let defaultMaxStreams = 100

    /// Whether a new request can go here now.
    var canOpenStream: Bool { state == .ready && active < maxStreams }
    /// The last stream ID of the GOAWAY received on the current attempt, if any.
    var goAwayLastStreamID: HTTP2StreamID?

    init(worker: H2LoadWorker) { self.worker = worker }
}

/// One request: a stream on a connection.
final class H2Request {
    let connection: H2Connection
    /// The connection attempt the stream belongs to.
    let attempt: Int
    let due: UInt64
    /// Earlier sends the server did not process.
    let retries: Int
    /// When it was handed to a connection; then when its HEADERS went out.
    var sent: UInt64
    let deadline: UInt64
    var stream: Channel?
    /// The response status; 0 until the response head.
    var status = 0
    /// The error code of a RST_STREAM from the server.
    var resetCode: HTTP2ErrorCode?
    var finished = false

    init(connection: H2Connection, attempt: Int, due: UInt64, retries: Int, sent: UInt64, deadline: UInt64) {
        self.connection = connection
        self.attempt = attempt
        self.due = due
        self.retries = retries
        self.sent = sent
        self.deadline = deadline
    }
}

/// Watches a connection's own frames (stream 0) and its lifetime: the server's SETTINGS completes the
/// handshake, a GOAWAY drains the connection, a connection error closes it.
final class H2ConnectionHandler: ChannelInboundHandler {
    typealias InboundIn = HTTP2Frame

    private let connection: H2Connection

    init(connection: H2Connection) { self.connection = connection }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data).payload {
        case .settings(.settings(let settings)):
            let max = settings.last(where: { $0.parameter == .maxConcurrentStreams }).map(\.value)
            connection.worker.settingsReceived(connection, context.channel, maxConcurrentStreams: max)
        case .goAway(let lastStreamID, let code, _):
            connection.worker.goAwayReceived(connection, context.channel, lastStreamID: lastStreamID, code)
        default:
            break
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        connection.worker.connectionClosed(connection, context.channel)
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        connection.worker.connectionError(connection, context.channel, error)
        context.close(promise: nil)
    }
}

/// Feeds one stream's response to its worker.
final class H2StreamHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPClientResponsePart

    private let request: H2Request

    init(request: H2Request) { self.request = request }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head):
            // A 1xx head is followed by the final one.
            request.status = Int(head.status.code)
        case .body:
            break
        case .end:
            request.connection.worker.responseComplete(request)
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        // No stream ID: its HEADERS never reached the connection.
        let streamID = try? context.channel.syncOptions?.getOption(HTTP2StreamChannelOptions.streamID)
        request.connection.worker.streamEnded(request, streamID: streamID)
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        if let closed = error as? NIOHTTP2Errors.StreamClosed { request.resetCode = closed.errorCode }
        context.close(promise: nil)
    }
}
