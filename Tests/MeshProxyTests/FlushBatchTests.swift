import Testing

@testable import MeshProxy

private final class Connection: HeldFlush {
    var flushes = 0
    func flushHeld() { flushes += 1 }
}

@Suite("Flushes held for the end of a read on the loop")
struct FlushBatchTests {
    @Test func outsideAReadNothingIsHeld() {
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
