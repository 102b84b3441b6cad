import NIOEmbedded
import Testing

@testable import MeshProxy

private final class Connection: HeldFlush {
    var flushes = 0
    func flushHeld() { flushes += 1 }
}

@Suite("Flushes held for the end of a read on the loop")
struct FlushBatchTests {
    @Test func outsideAReadAFlushWaitsForTheEndOfTheLoopsPass() {
        let loop = EmbeddedEventLoop()
        let batch = FlushBatch(eventLoop: loop)
        let a = Connection()
        let b = Connection()
        #expect(batch.hold(a) && batch.hold(b))
        #expect(a.flushes == 0 && batch.isHolding)
        loop.run()  // the pass's tasks
        #expect(a.flushes == 1 && b.flushes == 1 && !batch.isHolding)
        // A read that starts before the pass ends sends them at its end.
        #expect(batch.hold(a))
        batch.readStarted()
        batch.readEnded()
        #expect(a.flushes == 2)
        loop.run()
        #expect(a.flushes == 2, "sent once")
    }

    @Test func withoutALoopOutsideAReadNothingIsHeld() {
        let batch = FlushBatch()
        #expect(!batch.hold(Connection()))
    }

    @Test func heldFlushesGoWhenTheLastReadEnds() {
        let batch = FlushBatch()
        let a = Connection()
        let b = Connection()
        batch.readStarted()
        batch.readStarted()  // (a read of another connection that began within this one's)
        #expect(batch.hold(a) && batch.hold(b))
        batch.readEnded()
        #expect(a.flushes == 0 && b.flushes == 0, "one read is still in progress")
        batch.readEnded()
        #expect(a.flushes == 1 && b.flushes == 1)
        batch.readStarted()
        batch.readEnded()
        #expect(a.flushes == 1, "a flush is sent once")
    }

    @Test func aFlushHeldAgainWhileFlushingWaitsForTheNextRead() {
        let batch = FlushBatch()
        let a = Connection()
        batch.readStarted()
        #expect(batch.hold(a))
        batch.readEnded()
        #expect(!batch.hold(a), "between reads: flush at once")
    }
}
