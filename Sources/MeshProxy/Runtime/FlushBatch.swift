import Logging

/// A connection whose flush may wait for the end of the read in progress on its loop: the HTTP/2
/// connections, where one read of one connection writes to many others, a stream at a time.
protocol HeldFlush: AnyObject {
    /// The held flush, now that the reads are over.
    func flushHeld()
}

/// One event loop's flushes held while one of its connections reads. One read of an HTTP/2
/// connection — a client's HEADERS for many streams, an endpoint's responses for many clients —
/// writes to other connections a stream at a time; their flushes wait for the read's end, so each
/// connection writes once per read instead of once per stream: one syscall and one TCP segment
/// instead of many (HAProxy and Envoy batch the same way, at the end of their event loop's pass).
///
/// A reading connection calls `readStarted`, then `readEnded` exactly once, at its read-complete or
/// when it closes first. Outside reads (timers, connects, promises) `hold` says no: flush at once.
/// Bounded by the loop's connections (each is held at most once per read). Confined to the loop.
final class FlushBatch {
    private var readsInProgress = 0
    private var held: [any HeldFlush] = []

    var isHolding: Bool { readsInProgress > 0 }

    func readStarted() { readsInProgress += 1 }

    /// A read is over: the last one in progress sends the held flushes.
    func readEnded() {
        readsInProgress -= 1
        guard readsInProgress == 0, !held.isEmpty else { return }
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
        readsInProgress = 1
        readEnded()
    }

    private var reportedImbalance = false

    /// Holds `connection`'s flush until the reads in progress end; false when none is (flush now).
    /// The caller registers a connection once until its `flushHeld`.
    func hold(_ connection: any HeldFlush) -> Bool {
        guard readsInProgress > 0 else { return false }
        held.append(connection)
        return true
    }
}
