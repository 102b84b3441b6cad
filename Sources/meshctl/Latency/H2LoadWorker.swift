import NIOCore
import NIOHTTP1
import NIOHTTP2
import NIOPosix

/// The HTTP/2 counterpart of `LoadWorker`: one event loop's share of a constant-rate run against one
/// target over HTTP/2 with prior knowledge (h2c), on the same schedule and with the same result.
///
/// Each request is a new stream on one of the worker's connections, taken round robin among those that
/// are ready (the server's SETTINGS received, no GOAWAY) and below the server's
/// SETTINGS_MAX_CONCURRENT_STREAMS; a connection carries up to that many streams at once. When every
/// connection is full (or none is ready) the request waits in the worker's queue, and its latency still
/// counts from its due time, as with HTTP/1.1. The worker keeps this bound itself rather than letting
/// NIO buffer streams beyond it: a buffered stream costs CPU on every flush, and a queue of them grows
/// without bound once the event loop falls behind (then it never catches up: NIO runs due timers and
/// tasks before reading the socket, so the responses that would free streams are not read).
///
/// A stream the server did not process — reset with REFUSED_STREAM, above the last stream ID of a
/// GOAWAY, or never sent — is sent again on another connection (at most `maxRetries` times), its
/// latency still counted from its due time; any other stream that ends without a complete response
/// is an `io` error.
///
/// Everything here runs on `loop`, like `LoadWorker`: the scheduler timer, the connection and stream
/// handlers and the housekeeping tick.
final class H2LoadWorker: LoadWorking {
    let loop: EventLoop
    let index: Int
    let address: SocketAddress
    let settings: LoadSettings
    /// The request as an HTTP/1 head: `HTTP2FramePayloadToHTTP1ClientCodec` turns it into HEADERS
    /// (its `host` header becomes `:authority`).
    let requestHead: HTTPRequestHead

    private var connections: [H2Connection] = []
    private var roundRobin = RoundRobin()
    /// Requests due and waiting for a ready connection, in due order.
    private var queue = CircularBuffer<Pending>()
    /// Requests handed to a connection and not yet removed, in send order. That is deadline order (a
    /// deadline is the due time, or in closed loop the send, plus the timeout) but for retried
    /// requests, so the timeout check only looks at the front (a retried request may time out up to
    /// one retry's delay late); finished requests are dropped when they reach it.
    private var inFlight = CircularBuffer<H2Request>()
    /// Requests handed to a connection and not finished.
    private var busyCount = 0
    private var result = WorkerResult()

    private var started = false
    private var finished = false
    private var start: UInt64 = 0
    private var measureStart: UInt64 = 0
    private var end: UInt64 = 0
    private var hardStop: UInt64 = 0
    private var nextLocal: UInt64 = 0
    private var localTotal: UInt64 = 0
    private var schedulingDone = false
    private var housekeeping: RepeatedTask?
    private var done: EventLoopPromise<WorkerResult>?

    /// Sends of one request the server did not process, after the first.
    static let maxRetries = 2

    /// A request waiting in the queue.
    struct Pending {
        var due: UInt64
        /// Earlier sends the server did not process.
        var retries = 0
    }

    /// Our SETTINGS: NIO's defaults, and no server push.
    static let connectionConfiguration: NIOHTTP2Handler.ConnectionConfiguration = {
        var c = NIOHTTP2Handler.ConnectionConfiguration()
        c.initialSettings = nioDefaultSettings + [HTTP2Setting(parameter: .enablePush, value: 0)]
        return c
    }()

    init(loop: EventLoop, index: Int, address: SocketAddress, requestHead: HTTPRequestHead, settings: LoadSettings) {
        precondition(!settings.schedule.unthrottled, "HTTP/2 runs need a rate (Latency.validate refuses --rate 0 with --http2)")
        self.loop = loop
        self.index = index
        self.address = address
        self.requestHead = requestHead
        self.settings = settings
        self.queue.reserveCapacity(min(settings.maxQueue, 4096))
    }

    var firstConnectError: String? { result.firstConnectError }

    // MARK: Phase 1: connect

    func connectAll() -> EventLoopFuture<Int> {
        loop.preconditionInEventLoop()
        let futures = (0..<settings.connections).map { _ -> EventLoopFuture<Void> in
            let connection = H2Connection(worker: self)
            connections.append(connection)
            let attemptOver = loop.makePromise(of: Void.self)
            connect(connection, attemptOver: attemptOver)
            return attemptOver.futureResult
        }
        return EventLoopFuture.andAllComplete(futures, on: loop).assumeIsolated().map {
            self.connections.filter(\.everConnected).count
        }.nonisolated()
    }

    /// One connection attempt: TCP, then the HTTP/2 handshake (our preface and SETTINGS, the server's
    /// SETTINGS). `attemptOver` (first attempts only: every one of them ends, ready or failed, before
    /// the run starts) is succeeded when the attempt is over.
    private func connect(_ connection: H2Connection, attemptOver: EventLoopPromise<Void>? = nil) {
        connection.state = .connecting
        connection.attempt += 1
        connection.handshakeError = nil
        connection.goAwayLastStreamID = nil
        connection.active = 0
        connection.maxStreams = H2Connection.defaultMaxStreams
        let attempt = connection.attempt
        connection.attemptOver = attemptOver
        let bound = NIOLoopBound(connection, eventLoop: loop)
        ClientBootstrap(group: loop)
            .connectTimeout(.nanoseconds(Int64(settings.connectTimeoutNanos)))
            .channelOption(.tcpOption(.tcp_nodelay), value: 1)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    let connection = bound.value
                    // Server-initiated streams (push) are refused by our SETTINGS; any that came would be ignored.
                    connection.multiplexer = try channel.pipeline.syncOperations.configureHTTP2Pipeline(
                        mode: .client, connectionConfiguration: H2LoadWorker.connectionConfiguration, streamConfiguration: .init()
                    ) { stream in stream.eventLoop.makeSucceededVoidFuture() }
                    try channel.pipeline.syncOperations.addHandler(H2ConnectionHandler(connection: connection))
                    connection.channel = channel
                }
            }
            .connect(to: address)
            .assumeIsolated().whenComplete { result in
                switch result {
                case .success(let channel):
                    self.tcpConnected(connection, channel, attempt: attempt)
                case .failure(let error):
                    if connection.attempt == attempt { self.attemptFailed(connection, "\(error)") }
                }
            }
    }

    private func tcpConnected(_ connection: H2Connection, _ channel: Channel, attempt: Int) {
        guard connection.attempt == attempt, connection.state == .connecting, connection.channel === channel else { return }
        // The server has --connect-timeout again to answer our preface with its SETTINGS.
        let timeout = settings.connectTimeoutNanos
        connection.handshakeTimer = loop.assumeIsolated().scheduleTask(in: .nanoseconds(Int64(timeout))) {
            guard connection.attempt == attempt, connection.state == .connecting else { return }
            connection.handshakeError = "no HTTP/2 SETTINGS from the server within \(timeout / 1_000_000) ms"
            channel.close(promise: nil)
        }
    }

    private func attemptFailed(_ connection: H2Connection, _ error: String) {
        guard connection.state == .connecting else { return }
        connection.handshakeTimer?.cancel()
        connection.handshakeTimer = nil
        connection.state = .disconnected
        connection.channel = nil
        connection.multiplexer = nil
        if result.firstConnectError == nil { result.firstConnectError = error }
        connection.attemptOver?.succeed()
        connection.attemptOver = nil
        guard started, !finished else { return }
        if monotonicNanos() >= measureStart { result.errors.connect += 1 }
        loop.assumeIsolated().scheduleTask(in: .nanoseconds(Int64(settings.reconnectDelayNanos))) {
            if !self.finished && connection.state == .disconnected { self.connect(connection) }
        }
    }

    // MARK: Connection events (from H2ConnectionHandler, on this loop)

    /// The server's SETTINGS: the first completes the handshake (the connection can carry streams); any
    /// may change how many streams it takes at once.
    func settingsReceived(_ connection: H2Connection, _ channel: Channel, maxConcurrentStreams: Int?) {
        guard connection.channel === channel else { return }
        if let maxConcurrentStreams { connection.maxStreams = maxConcurrentStreams }
        guard connection.state == .connecting else {
            if started { dispatch() }
            return
        }
        connection.handshakeTimer?.cancel()
        connection.handshakeTimer = nil
        connection.everConnected = true
        connection.attemptOver?.succeed()
        connection.attemptOver = nil
        if finished {
            connection.state = .closing
            channel.close(promise: nil)
            return
        }
        connection.state = .ready
        if started { dispatch() }
    }

    /// A GOAWAY: no new streams on this connection; it closes once its streams are done, and is then
    /// replaced. Streams above the GOAWAY's last stream ID were not processed: NIO closes them, and
    /// they are sent again (`streamEnded`).
    func goAwayReceived(
        _ connection: H2Connection, _ channel: Channel, lastStreamID: HTTP2StreamID, _ code: HTTP2ErrorCode
    ) {
        guard connection.channel === channel else { return }
        connection.goAwayLastStreamID = min(lastStreamID, connection.goAwayLastStreamID ?? lastStreamID)
        switch connection.state {
        case .connecting:
            connection.handshakeError = "the server sent GOAWAY (\(code)) during the HTTP/2 handshake"
            channel.close(promise: nil)
        case .ready:
            connection.state = .draining
            if connection.active == 0 { channel.close(promise: nil) }
        case .draining, .closing, .disconnected:
            break
        }
    }

    func connectionError(_ connection: H2Connection, _ channel: Channel, _ error: Error) {
        guard connection.channel === channel, connection.state == .connecting, connection.handshakeError == nil else { return }
        connection.handshakeError = Self.describe(error)
    }

    /// An error as the report shows it. NIO's HTTP/2 errors print the file and line that threw them:
    /// keep the name; an answer that does not parse as frames is, in practice, from an HTTP/1 server.
    static func describe(_ error: Error) -> String {
        if error is NIOHTTP2Errors.UnableToParseFrame { return "the answer is not HTTP/2 frames" }
        let text = "\(error)"
        guard let paren = text.firstIndex(of: "("), text.contains("file:") || text.contains("location:") else { return text }
        return String(text[..<paren])
    }

    func connectionClosed(_ connection: H2Connection, _ channel: Channel) {
        guard connection.channel === channel else { return }
        switch connection.state {
        case .connecting:
            let why = connection.handshakeError ?? "the server closed the connection"
            attemptFailed(connection, "HTTP/2 handshake failed: \(why) (--http2 needs a server that speaks h2c with prior knowledge)")
            return
        case .ready, .draining, .closing, .disconnected:
            break
        }
        // Its streams are closed by NIO and end (as `io` errors when unfinished) through their own handlers.
        connection.state = .disconnected
        connection.channel = nil
        connection.multiplexer = nil
        connection.active = 0
        if started && !finished { connect(connection) }
    }

    // MARK: Phase 2: run

    func run(start: UInt64) -> EventLoopFuture<WorkerResult> {
        loop.preconditionInEventLoop()
        started = true
        let done = loop.makePromise(of: WorkerResult.self)
        self.done = done
        self.start = start
        measureStart = start + settings.schedule.warmupNanos
        end = start + settings.schedule.totalNanos
        hardStop = end + settings.timeoutNanos + 1_000_000_000
        localTotal = settings.schedule.requests(forWorker: index)
        let s = settings.schedule
        var measured: UInt64 = 0
        for i in 0..<localTotal where s.offsetNanos(s.globalIndex(worker: index, local: i)) >= s.warmupNanos { measured += 1 }
        result.measuredRequests = measured
        for connection in connections where connection.state == .disconnected { connect(connection) }
        housekeeping = loop.scheduleRepeatedTask(initialDelay: .milliseconds(10), delay: .milliseconds(10)) {
            [bound = NIOLoopBound(self, eventLoop: loop)] _ in
            bound.value.tick()
        }
        scheduleFire(at: start)
        return done.futureResult
    }

    private func scheduleFire(at t: UInt64) {
        loop.assumeIsolated().scheduleTask(deadline: .uptimeNanoseconds(t)) { self.fire() }
    }

    /// Enqueues every request that is due, opens streams for them, and sets the timer for the next one.
    private func fire() {
        guard !finished else { return }
        let now = monotonicNanos()
        let s = settings.schedule
        while nextLocal < localTotal {
            let due = start + s.offsetNanos(s.globalIndex(worker: index, local: nextLocal))
            if due > now {
                dispatch()
                scheduleFire(at: due)
                return
            }
            if queue.count >= settings.maxQueue {
                if due >= measureStart { result.errors.dropped += 1 }
            } else {
                queue.append(Pending(due: due))
            }
            nextLocal += 1
        }
        schedulingDone = true
        dispatch()
        checkFinished()
    }

    private func dispatch() {
        guard !finished else { return }
        let now = monotonicNanos()
        while !queue.isEmpty, let i = roundRobin.pick(count: connections.count, isUsable: { connections[$0].canOpenStream }) {
            let pending = queue.removeFirst()
            if !settings.closedLoop && now >= pending.due + settings.timeoutNanos {
                if pending.due >= measureStart { result.errors.timeout += 1 }
                continue
            }
            open(pending, on: connections[i], now: now)
        }
    }

    /// Opens a stream for a request; the request is written once the stream exists (the multiplexer
    /// creates it on the next loop tick).
    private func open(_ pending: Pending, on connection: H2Connection, now: UInt64) {
        guard let multiplexer = connection.multiplexer else { return }
        let request = H2Request(
            connection: connection, attempt: connection.attempt, due: pending.due, retries: pending.retries, sent: now,
            deadline: (settings.closedLoop ? now : pending.due) + settings.timeoutNanos)
        connection.active += 1
        busyCount += 1
        inFlight.append(request)
        let bound = NIOLoopBound(request, eventLoop: loop)
        multiplexer.createStreamChannel { stream in
            stream.eventLoop.makeCompletedFuture {
                try stream.pipeline.syncOperations.addHandler(HTTP2FramePayloadToHTTP1ClientCodec(httpProtocol: .http))
                try stream.pipeline.syncOperations.addHandler(H2StreamHandler(request: bound.value))
            }
        }.assumeIsolated().whenComplete { result in
            switch result {
            case .success(let stream): self.streamOpened(request, stream)
            case .failure: self.streamEnded(request, streamID: nil)
            }
        }
    }

    private func streamOpened(_ request: H2Request, _ stream: Channel) {
        guard !request.finished else {
            // Timed out (or the run stopped) before the stream existed.
            stream.close(promise: nil)
            return
        }
        guard request.attempt == request.connection.attempt, request.connection.state == .ready else {
            // A GOAWAY (or a close) came between the choice of the connection and the stream: nothing
            // was sent, send it elsewhere.
            stream.close(promise: nil)
            return
        }
        request.stream = stream
        // Sent once its HEADERS are out (NIO holds them back if the server has just lowered its
        // SETTINGS_MAX_CONCURRENT_STREAMS): that wait is client-side queueing, in `sendDelay` and left
        // out in closed loop.
        stream.write(HTTPClientRequestPart.head(requestHead)).assumeIsolated().whenSuccess {
            let now = monotonicNanos()
            request.sent = now
            if request.due >= self.measureStart { self.result.sendDelay.record(LatencyUnits.micros(now - request.due)) }
        }
        stream.writeAndFlush(HTTPClientRequestPart.end(nil), promise: nil)
    }

    /// Marks a request done, whatever the outcome. The caller counts the outcome, then calls `dispatch`
    /// and `checkFinished`; `closeIfDrained` comes last, as closing runs handlers at once.
    private func finish(_ request: H2Request) {
        request.finished = true
        request.stream = nil
        busyCount -= 1
        if request.attempt == request.connection.attempt { request.connection.active -= 1 }
    }

    /// A connection that got a GOAWAY closes after its last stream (and is then replaced).
    private func closeIfDrained(_ connection: H2Connection) {
        if connection.state == .draining && connection.active == 0 { connection.channel?.close(promise: nil) }
    }

    // MARK: Stream events (from H2StreamHandler, on this loop)

    func responseComplete(_ request: H2Request) {
        guard !request.finished else { return }
        finish(request)
        let now = monotonicNanos()
        let measured = request.due >= measureStart
        if (200..<300).contains(request.status) {
            if measured {
                result.latency.record(LatencyUnits.micros(now - (settings.closedLoop ? request.sent : request.due)))
                result.ok += 1
            }
            if now >= measureStart && now <= end { result.completedInWindow += 1 }
        } else if measured {
            result.errors.status += 1
        }
        dispatch()
        checkFinished()
        closeIfDrained(request.connection)
    }

    /// The stream closed before its response was complete (reset, connection lost), or could not be
    /// opened. `streamID` is nil when its HEADERS never reached the connection.
    func streamEnded(_ request: H2Request, streamID: HTTP2StreamID?) {
        guard !request.finished else { return }
        finish(request)
        let connection = request.connection
        var unprocessed = request.status == 0 && (streamID == nil || request.resetCode == .refusedStream)
        if let streamID, let last = connection.goAwayLastStreamID, request.attempt == connection.attempt, streamID > last {
            unprocessed = request.status == 0
        }
        if unprocessed && request.retries < Self.maxRetries && !finished {
            // Ahead of the queue: it is older than everything there.
            queue.prepend(Pending(due: request.due, retries: request.retries + 1))
        } else if request.due >= measureStart {
            result.errors.io += 1
        }
        dispatch()
        checkFinished()
        closeIfDrained(connection)
    }

    /// Every 10 ms: time out streams and queued requests, stop at the hard deadline.
    private func tick() {
        guard started, !finished else { return }
        let now = monotonicNanos()
        while let request = inFlight.first, request.finished || now >= request.deadline {
            inFlight.removeFirst()
            if !request.finished { timeOut(request) }
        }
        if !settings.closedLoop {
            while let pending = queue.first, now >= pending.due + settings.timeoutNanos {
                queue.removeFirst()
                if pending.due >= measureStart { result.errors.timeout += 1 }
            }
        }
        if now >= hardStop {
            for pending in queue where pending.due >= measureStart { result.errors.timeout += 1 }
            queue.removeAll()
            while let request = inFlight.popFirst() {
                if !request.finished { timeOut(request) }
            }
            schedulingDone = true
        }
        dispatch()
        checkFinished()
        for connection in connections { closeIfDrained(connection) }
    }

    /// Counts a timeout and resets the stream (RST_STREAM CANCEL); the connection stays.
    private func timeOut(_ request: H2Request) {
        let stream = request.stream
        finish(request)
        if request.due >= measureStart { result.errors.timeout += 1 }
        stream?.close(promise: nil)
    }

    private func checkFinished() {
        guard started, !finished, schedulingDone, queue.isEmpty, busyCount == 0 else { return }
        finished = true
        housekeeping?.cancel()
        result.connected = connections.filter(\.everConnected).count
        var closes: [EventLoopFuture<Void>] = []
        for connection in connections {
            if let channel = connection.channel {
                connection.state = .closing
                closes.append(channel.close())
            }
        }
        let result = self.result
        let done = self.done
        EventLoopFuture.andAllComplete(closes, on: loop).whenComplete { _ in done?.succeed(result) }
    }
}
