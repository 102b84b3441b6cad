import Histogram
import NIOCore
import NIOHTTP1
import NIOPosix

/// Monotonic time in nanoseconds (the clock NIO's timers use).
@inline(__always) func monotonicNanos() -> UInt64 { NIODeadline.now().uptimeNanoseconds }

/// One event loop's share of a constant-rate HTTP/1.1 run against one target: its connections, its part of
/// the schedule, the queue of due requests waiting for a free connection, and its histograms.
///
/// Everything here runs on `loop` (no locks): the scheduler timer, the connections' handlers and the
/// housekeeping tick. Request i is due at `start + i / rate`; when it is due and every connection is
/// busy it waits in the queue, and its latency still counts from the due time (the correction for
/// coordinated omission). In closed-loop mode latency counts from the actual send instead.
final class LoadWorker: LoadWorking {
    let loop: EventLoop
    let index: Int
    let address: SocketAddress
    let settings: LoadSettings
    let requestHead: HTTPRequestHead

    private var slots: [ConnectionSlot] = []
    private var idle: [ConnectionSlot] = []
    private var busyCount = 0
    private var queue = CircularBuffer<UInt64>()
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
    private var endTimer: Scheduled<Void>?
    private var done: EventLoopPromise<WorkerResult>?

    init(loop: EventLoop, index: Int, address: SocketAddress, requestHead: HTTPRequestHead, settings: LoadSettings) {
        self.loop = loop
        self.index = index
        self.address = address
        self.requestHead = requestHead
        self.settings = settings
        self.queue.reserveCapacity(min(settings.maxQueue, 4096))
    }

    /// The first connect error seen (for the report when no connection could be opened).
    var firstConnectError: String? { result.firstConnectError }

    // MARK: Phase 1: connect

    /// Opens the connections once; succeeds (with the number that connected) when every first
    /// attempt has finished, whatever its outcome.
    func connectAll() -> EventLoopFuture<Int> {
        loop.preconditionInEventLoop()
        let futures = (0..<settings.connections).map { _ -> EventLoopFuture<Void> in
            let slot = ConnectionSlot(worker: self)
            slots.append(slot)
            return connect(slot)
        }
        return EventLoopFuture.andAllComplete(futures, on: loop).assumeIsolated().map { self.slots.filter(\.everConnected).count }
            .nonisolated()
    }

    @discardableResult
    private func connect(_ slot: ConnectionSlot) -> EventLoopFuture<Void> {
        slot.state = .connecting
        let bound = NIOLoopBound(slot, eventLoop: loop)
        let future = ClientBootstrap(group: loop)
            .connectTimeout(.nanoseconds(Int64(settings.connectTimeoutNanos)))
            .channelOption(.tcpOption(.tcp_nodelay), value: 1)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHTTPClientHandlers()
                    try channel.pipeline.syncOperations.addHandler(ResponseHandler(slot: bound.value))
                }
            }
            .connect(to: address)
        return future.assumeIsolated().map { channel in
            self.connected(slot, channel)
        }.recover { error in
            self.connectFailed(slot, error)
        }.nonisolated()
    }

    private func connected(_ slot: ConnectionSlot, _ channel: Channel) {
        slot.channel = channel
        slot.everConnected = true
        if finished {
            slot.state = .closing
            channel.close(promise: nil)
            return
        }
        slot.state = .idle
        idle.append(slot)
        if started { dispatch() }
    }

    private func connectFailed(_ slot: ConnectionSlot, _ error: Error) {
        slot.state = .disconnected
        if result.firstConnectError == nil { result.firstConnectError = "\(error)" }
        guard started, !finished else { return }
        if monotonicNanos() >= measureStart { result.errors.connect += 1 }
        loop.assumeIsolated().scheduleTask(in: .nanoseconds(Int64(settings.reconnectDelayNanos))) {
            if !self.finished && slot.state == .disconnected { self.connect(slot) }
        }
    }

    // MARK: Phase 2: run

    /// Runs this worker's share of the schedule from `start` (monotonic nanoseconds); the future
    /// completes once every request is answered, failed or timed out and the connections are closed.
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
        if !settings.schedule.unthrottled {
            // Requests of this worker that fall in the measured window.
            var measured: UInt64 = 0
            let s = settings.schedule
            for i in 0..<localTotal where s.offsetNanos(s.globalIndex(worker: index, local: i)) >= s.warmupNanos { measured += 1 }
            result.measuredRequests = measured
        }
        for slot in slots where slot.state == .disconnected { connect(slot) }
        let isolated = loop.assumeIsolated()
        housekeeping = loop.scheduleRepeatedTask(initialDelay: .milliseconds(10), delay: .milliseconds(10)) {
            [bound = NIOLoopBound(self, eventLoop: loop)] _ in
            bound.value.tick()
        }
        if settings.schedule.unthrottled {
            isolated.scheduleTask(deadline: .uptimeNanoseconds(start)) { self.dispatch() }
            endTimer = isolated.scheduleTask(deadline: .uptimeNanoseconds(end)) {
                self.schedulingDone = true
                self.checkFinished()
            }
        } else {
            scheduleFire(at: start)
        }
        return done.futureResult
    }

    private func scheduleFire(at t: UInt64) {
        loop.assumeIsolated().scheduleTask(deadline: .uptimeNanoseconds(t)) { self.fire() }
    }

    /// Enqueues every request that is due, hands them to idle connections, and sets the timer for
    /// the next one.
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
            enqueue(due)
            nextLocal += 1
        }
        schedulingDone = true
        dispatch()
        checkFinished()
    }

    private func enqueue(_ due: UInt64) {
        if queue.count >= settings.maxQueue {
            if due >= measureStart { result.errors.dropped += 1 }
            return
        }
        queue.append(due)
    }

    private func dispatch() {
        guard !finished else { return }
        let now = monotonicNanos()
        if settings.schedule.unthrottled {
            guard !schedulingDone, now >= start, now < end else { return }
            while let slot = idle.popLast() { send(slot, due: now, now: now) }
            return
        }
        while !queue.isEmpty, !idle.isEmpty {
            let due = queue.removeFirst()
            if !settings.closedLoop && now >= due + settings.timeoutNanos {
                if due >= measureStart { result.errors.timeout += 1 }
                continue
            }
            send(idle.removeLast(), due: due, now: now)
        }
    }

    private func send(_ slot: ConnectionSlot, due: UInt64, now: UInt64) {
        guard let channel = slot.channel else { return }
        let deadline = (settings.closedLoop ? now : due) + settings.timeoutNanos
        slot.state = .busy(due: due, sent: now, deadline: deadline)
        slot.status = 0
        slot.keepAlive = true
        busyCount += 1
        if settings.schedule.unthrottled {
            if due >= measureStart { result.measuredRequests += 1 }
        }
        if due >= measureStart { result.sendDelay.record(LatencyUnits.micros(now - due)) }
        channel.write(HTTPClientRequestPart.head(requestHead), promise: nil)
        channel.writeAndFlush(HTTPClientRequestPart.end(nil), promise: nil)
    }

    // MARK: Connection events (from ResponseHandler, on this loop)

    fileprivate func responseComplete(_ slot: ConnectionSlot) {
        guard case .busy(let due, let sent, _) = slot.state else { return }
        busyCount -= 1
        let now = monotonicNanos()
        let measured = due >= measureStart
        if (200..<300).contains(slot.status) {
            if measured {
                result.latency.record(LatencyUnits.micros(now - (settings.closedLoop ? sent : due)))
                result.ok += 1
            }
            if now >= measureStart && now <= end { result.completedInWindow += 1 }
        } else if measured {
            result.errors.status += 1
        }
        if slot.keepAlive && !finished {
            slot.state = .idle
            idle.append(slot)
        } else {
            slot.state = .closing
            slot.channel?.close(promise: nil)
        }
        dispatch()
        checkFinished()
    }

    fileprivate func connectionClosed(_ slot: ConnectionSlot) {
        switch slot.state {
        case .busy(let due, _, _):
            busyCount -= 1
            if due >= measureStart { result.errors.io += 1 }
        case .idle:
            if let i = idle.firstIndex(where: { $0 === slot }) { idle.remove(at: i) }
        case .timedOut, .closing, .connecting, .disconnected:
            break
        }
        slot.state = .disconnected
        slot.channel = nil
        if started && !finished { connect(slot) }
        checkFinished()
    }

    /// Every 10 ms: time out requests in flight or waiting too long, stop at the hard deadline.
    private func tick() {
        guard started, !finished else { return }
        let now = monotonicNanos()
        for slot in slots {
            if case .busy(let due, _, let deadline) = slot.state, now >= deadline {
                busyCount -= 1
                if due >= measureStart { result.errors.timeout += 1 }
                slot.state = .timedOut
                slot.channel?.close(promise: nil)
            }
        }
        if !settings.closedLoop {
            while let due = queue.first, now >= due + settings.timeoutNanos {
                queue.removeFirst()
                if due >= measureStart { result.errors.timeout += 1 }
            }
        }
        if now >= hardStop {
            for due in queue where due >= measureStart { result.errors.timeout += 1 }
            queue.removeAll()
            for slot in slots {
                if case .busy(let due, _, _) = slot.state {
                    busyCount -= 1
                    if due >= measureStart { result.errors.timeout += 1 }
                    slot.state = .timedOut
                }
            }
            schedulingDone = true
        }
        checkFinished()
    }

    private func checkFinished() {
        guard started, !finished, schedulingDone, queue.isEmpty, busyCount == 0 else { return }
        finished = true
        housekeeping?.cancel()
        endTimer?.cancel()
        result.connected = slots.filter(\.everConnected).count
        var closes: [EventLoopFuture<Void>] = []
        for slot in slots {
            if let channel = slot.channel {
                slot.state = .closing
                closes.append(channel.close())
            }
        }
        let result = self.result
        let done = self.done
        EventLoopFuture.andAllComplete(closes, on: loop).whenComplete { _ in done?.succeed(result) }
    }
}

/// One connection of a worker, reused across reconnects.
final class ConnectionSlot {
    enum State: Equatable {
        case disconnected
        case connecting
        case idle
        case busy(due: UInt64, sent: UInt64, deadline: UInt64)
        /// Timed out (counted); closing.
        case timedOut
        /// Closing after a `Connection: close` response, or at the end.
        case closing
    }

    unowned let worker: LoadWorker
    var state: State = .disconnected
    var channel: Channel?
    var everConnected = false
    var status = 0
    var keepAlive = true

    init(worker: LoadWorker) { self.worker = worker }
}

/// Feeds a connection's responses to its worker.
final class ResponseHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPClientResponsePart

    private let slot: ConnectionSlot

    init(slot: ConnectionSlot) { self.slot = slot }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head):
            slot.status = Int(head.status.code)
            slot.keepAlive = head.isKeepAlive
        case .body:
            break
        case .end:
            slot.worker.responseComplete(slot)
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        slot.worker.connectionClosed(slot)
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        context.close(promise: nil)
    }
}
