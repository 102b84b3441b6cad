import NIOCore
import NIOEmbedded
import Testing

@testable import MeshProxy

/// Counts promise completions (an EmbeddedChannel completes them on the test's own thread).
private final class Count: @unchecked Sendable {
    var n = 0
}

@Suite("TLS write coalescing")
struct TLSWriteCoalescerTests {
    private func channel() throws -> EmbeddedChannel {
        let channel = EmbeddedChannel()
        try channel.pipeline.syncOperations.addHandler(TLSWriteCoalescer())
        return channel
    }

    private func buffer(_ s: String) -> ByteBuffer { ByteBuffer(string: s) }

    private func written(_ channel: EmbeddedChannel) throws -> [String] {
        var out: [String] = []
        while let b = try channel.readOutbound(as: ByteBuffer.self) { out.append(String(buffer: b)) }
        return out
    }

    @Test func smallWritesOfOneFlushBecomeOneWrite() throws {
        let channel = try channel()
        let done = Count()
        for part in ["HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\n", "ok\n", ""] {
            let p = channel.eventLoop.makePromise(of: Void.self)
            p.futureResult.whenSuccess { done.n += 1 }
            channel.write(buffer(part), promise: p)
        }
        #expect(try written(channel).isEmpty, "nothing goes out before the flush")
        channel.flush()
        #expect(try written(channel) == ["HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok\n"])
        #expect(done.n == 3, "every write's promise completes with the joined write")
        _ = try channel.finish()
    }

    @Test func aLargeWritePassesThroughInOrder() throws {
        let channel = try channel()
        let big = String(repeating: "x", count: TLSWriteCoalescer.maxJoined + 1)
        channel.write(buffer("head"), promise: nil)
        channel.write(buffer(big), promise: nil)
        channel.write(buffer("tail"), promise: nil)
        channel.flush()
        #expect(try written(channel) == ["head", big, "tail"])
        _ = try channel.finish()
    }

    @Test func writesThatWouldPassOneRecordAreSplitThere() throws {
        let channel = try channel()
        let half = String(repeating: "a", count: TLSWriteCoalescer.maxJoined / 2 + 1)
        channel.write(buffer(half), promise: nil)
        channel.write(buffer(half), promise: nil)
        channel.write(buffer("end"), promise: nil)
        channel.flush()
        #expect(try written(channel) == [half, half + "end"])
        _ = try channel.finish()
    }

    @Test func eachFlushSendsWhatCameBeforeIt() throws {
        let channel = try channel()
        channel.writeAndFlush(buffer("one"), promise: nil)
        channel.write(buffer("two"), promise: nil)
        channel.write(buffer("three"), promise: nil)
        channel.flush()
        #expect(try written(channel) == ["one", "twothree"])
        _ = try channel.finish()
    }

    @Test func closeTreatsHeldWritesAsTheChannelTreatsUnflushedOnes() throws {
        // Whatever the channel does with writes not flushed when it closes, it does the same with the
        // ones this handler held: they reach it before the close, each promise with them.
        func outcome(coalescing: Bool) throws -> (succeeded: Int, failed: Int) {
            let channel = EmbeddedChannel()
            if coalescing { try channel.pipeline.syncOperations.addHandler(TLSWriteCoalescer()) }
            let succeeded = Count()
            let failed = Count()
            for part in ["a", "b"] {
                let p = channel.eventLoop.makePromise(of: Void.self)
                p.futureResult.whenComplete { result in
                    if case .success = result { succeeded.n += 1 } else { failed.n += 1 }
                }
                channel.write(buffer(part), promise: p)
            }
            try channel.close().wait()
            return (succeeded.n, failed.n)
        }
        let with = try outcome(coalescing: true)
        let without = try outcome(coalescing: false)
        #expect(with.succeeded == without.succeeded && with.failed == without.failed, "\(with) vs \(without)")
    }
}
