import Logging
import NIOCore

/// A connection whose flush may wait for the end of the read in progress on its loop, or of the
/// loop's pass: the HTTP/2 connections, where one read of one connection — or the reads of many
/// HTTP/1.1 connections in one pass — write to another a stream at a time.
protocol HeldFlush: AnyObject {
    /// The held flush, now that the reads are over.
    func flushHeld()
}

/// A connection's flush under its loop's `FlushBatch`: whether frames wait to be flushed, and whether
/// the batch holds the flush (the connection is registered until its `flushHeld`).
struct PendingFlush {
    /// Frames written since the last flush.
    var needed = false
    private(set) var held = false

    /// Whether to flush now: something waits and the batch does not hold it (else `connection` is
    /// registered, once).
    mutating func flushNow(_ connection: any HeldFlush, in batch: FlushBatch) -> Bool {
        guard needed, !held else { return false }
        if batch.hold(connection) {
            held = true
            return false
        }
        needed = false
        return true
    }

    /// Registers `connection` before it writes (the end of the pass is queued now).
    mutating func holdAhead(_ connection: any HeldFlush, in batch: FlushBatch) {
        if !held && batch.hold(connection) { held = true }
    }

    /// The batch let go (`flushHeld`): whether something waits to be flushed.
    mutating func released() -> Bool {
        held = false
        return take()
    }

    /// Whether something waits to be flushed (it is flushed now).
    mutating func take() -> Bool {
        guard needed else { return false }
        needed = false
        return true
    }
}

/// One event loop's held flushes. One read of an HTTP/2 connection — a client's HEADERS for many
/// streams, an endpoint's responses for many clients — writes to other connections a stream at a
/// time, and so do the reads of many HTTP/1.1 connections whose requests share one HTTP/2 upstream
/// connection (and their responses, one downstream HTTP/2 connection). Their flushes wait, so each
/// connection writes once per read, or per pass of the loop, instead of once per stream: one syscall
/// and one TCP segment instead of many (HAProxy and Envoy batch the same way, at the end of their
/// event loop's pass).
///
/// - During a read (a reading connection calls `readStarted`, then `readEnded` exactly once, at its
///   read-complete or when it closes first) a flush waits for the last read in progress to end,
///   still within the loop's I/O processing.
/// - Outside reads (the reads of HTTP/1.1 connections, which are not counted, connects, timers,
///   promises) a flush waits for the end of the loop's pass: one task, queued with the first held
///   flush of the pass, runs after the pass's I/O. (That task is NIO's only cost here: one enqueue
///   per pass, not per stream.)
///
/// Bounded by the loop's connections (each is held at most once until its `flushHeld`). Confined to
/// the loop.
final class FlushBatch {
    private var readsInProgress = 0
    private var held: [any HeldFlush] = []
    /// The loop whose pass ends a hold outside reads; nil (tests): outside reads, flush at once.
    private let eventLoop: EventLoop?
    private var passEndQueued = false
    private var reportedImbalance = false

    init(eventLoop: EventLoop? = nil) { self.eventLoop = eventLoop }

    var isHolding: Bool { readsInProgress > 0 || passEndQueued }

    func readStarted() { readsInProgress += 1 }

    /// A read is over: the last one in progress sends the held flushes.
    func readEnded() {
        readsInProgress -= 1
        guard readsInProgress == 0 else { return }
        sendHeld()
    }

    /// Holds `connection`'s flush until the reads in progress end, or outside reads until the end of
    /// the loop's pass; false without a loop outside reads (flush now). The caller registers a
    /// connection once until its `flushHeld`.
    func hold(_ connection: any HeldFlush) -> Bool {
        if readsInProgress == 0 && !passEndQueued {
            guard let eventLoop else { return false }
            passEndQueued = true
            eventLoop.assumeIsolated().execute { [self] in
                passEndQueued = false
                if readsInProgress == 0 { sendHeld() }
            }
        }
        held.append(connection)
        return true
    }

    private func sendHeld() {
        guard !held.isEmpty else { return }
        let connections = held
        held.removeAll(keepingCapacity: true)
        for connection in connections { connection.flushHeld() }
    }

    /// Between reads (the loop's tick): no read can be in progress. If one still counts, a connection
    /// missed its `readEnded` — a bug, which would hold flushes until the next read: say so once, and
    /// send them (a hold then lasts one tick, 100 ms, at most).
    func settle(logger: Logger) {
        guard readsInProgress != 0 else { return }
        if !reportedImbalance {
            reportedImbalance = true
            logger.error("held flushes outlived their read; sent at the tick", metadata: ["reads": "\(readsInProgress)"])
        }
        readsInProgress = 0
        sendHeld()
    }
}
