import Atomics
import CoreMetrics
import MeshCore
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1

/// Live requests for `GET /tap` (`meshctl tap`). Costs nothing while no one taps: the request path
/// reads one atomic. While someone taps, each loop collects finished requests (at most
/// `perLoopTickBound` per 100 ms tick; more are dropped) and hands them over once per tick; each tap
/// gets the ones matching its filter written to its connection, and only while the connection is
/// writable — a slow or stuck tap client loses events (`meshd_tap_dropped_total`), never costs a
/// buffer or a loop's time. At most `maxTaps` taps at once; each ends after its `max` events.
final class TapHub: Sendable {
    static let maxTaps = 8
    static let perLoopTickBound = 512

    final class Subscriber: Sendable {
        let filter: TapFilter
        let channel: Channel
        /// Events written so far (touched on the tap connection's loop only).
        let sent = ManagedAtomic<Int>(0)
        let finished = ManagedAtomic<Bool>(false)
        init(filter: TapFilter, channel: Channel) {
            self.filter = filter
            self.channel = channel
        }
    }

    /// Taps open now; the request path checks it (one relaxed load) before collecting anything.
    let active = ManagedAtomic<Int>(0)
    private let subscribers = NIOLockedValueBox<[Subscriber]>([])
    let dropped: CoreMetrics.Counter

    init(dropped: CoreMetrics.Counter) { self.dropped = dropped }

    func add(_ s: Subscriber) -> Bool {
        subscribers.withLockedValue { subs in
            guard subs.count < Self.maxTaps else { return false }
            subs.append(s)
            active.store(subs.count, ordering: .relaxed)
            return true
        }
    }

    func remove(_ s: Subscriber) {
        subscribers.withLockedValue { subs in
            subs.removeAll { $0 === s }
            active.store(subs.count, ordering: .relaxed)
        }
    }

    /// One loop's tick worth of finished requests (called by the loop, once per tick at most).
    func publish(_ events: [TapEvent]) {
        let subs = subscribers.withLockedValue { $0 }
        for s in subs {
            let matching = events.filter { s.filter.matches($0) }
            guard !matching.isEmpty else { continue }
            s.channel.eventLoop.execute { self.deliver(matching, to: s) }
        }
    }

    private func deliver(_ events: [TapEvent], to s: Subscriber) {
        guard !s.finished.load(ordering: .relaxed), s.channel.isActive else { return }
        guard s.channel.isWritable else {
            dropped.increment(by: events.count)
            return
        }
        let room = s.filter.max - s.sent.load(ordering: .relaxed)
        var buffer = s.channel.allocator.buffer(capacity: events.count * 256)
        for e in events.prefix(room) {
            buffer.writeString(e.line)
            buffer.writeInteger(UInt8(ascii: "\n"))
        }
        let n = min(room, events.count)
        s.sent.wrappingIncrement(by: n, ordering: .relaxed)
        s.channel.write(HTTPServerResponsePart.body(.byteBuffer(buffer)), promise: nil)
        if s.sent.load(ordering: .relaxed) >= s.filter.max {
            s.finished.store(true, ordering: .relaxed)
            remove(s)
            s.channel.writeAndFlush(HTTPServerResponsePart.end(nil)).whenComplete { _ in s.channel.close(promise: nil) }
        } else {
            s.channel.flush()
        }
    }
}
