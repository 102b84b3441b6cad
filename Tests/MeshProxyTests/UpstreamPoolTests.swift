import Logging
import MeshCore
import NIOCore
import NIOEmbedded
import Testing

@testable import MeshProxy

/// The HTTP/1.1 keep-alive pool's bookkeeping on EmbeddedChannels: lease order, the per-endpoint bound,
/// idle expiry, a peer's close, and the per-endpoint lists that a connection remembers.
@Suite("Upstream HTTP/1.1 pool")
struct UpstreamPoolTests {
    let shared: SharedRuntime
    let pool: UpstreamPool
    let a: SocketAddress
    let b: SocketAddress
    let loop = EmbeddedEventLoop()

    init() throws {
        let snapshot = try ResolvedSnapshot.resolve(try ConfigLoader.load(yaml: "mode: sidecar\n"), version: 1)
        shared = SharedRuntime(metrics: MeshMetrics(), logger: Logger(label: "test"), snapshot: snapshot)
        pool = UpstreamPool(eventLoop: loop, shared: shared)
        var config = UpstreamConfig()
        config.maxIdlePerEndpoint = 2
        config.idleTimeout = .seconds(10)
        pool.configure(config)
        a = try SocketAddress(ipAddress: "10.0.0.1", port: 80)
        b = try SocketAddress(ipAddress: "10.0.0.2", port: 80)
    }

    /// An open connection to `address` on its own EmbeddedChannel (on the pool's loop).
    private func connection(to address: SocketAddress) throws -> (UpstreamConnection, EmbeddedChannel) {
        let channel = EmbeddedChannel(loop: loop)
        let conn = UpstreamConnection(address: address, shared: shared)
        conn.pool = pool
        try channel.pipeline.syncOperations.addHandler(conn)
        try channel.connect(to: address).wait()
        #expect(conn.isUsable)
        return (conn, channel)
    }

    @Test func leasesTheMostRecentlyReleasedConnectionOfItsEndpoint() throws {
        let (c1, _) = try connection(to: a)
        let (c2, _) = try connection(to: a)
        let (c3, _) = try connection(to: b)
        #expect(pool.lease(a) == nil)
        pool.release(c1)
        pool.release(c2)
        pool.release(c3)
        #expect(pool.idleCount == 3)
        #expect(pool.lease(a) === c2)
        #expect(pool.lease(a) === c1)
        #expect(pool.lease(a) == nil)
        #expect(pool.lease(b) === c3)
        #expect(pool.idleCount == 0)
        // Released again: back to the same list, found by the next lease.
        pool.release(c1)
        #expect(pool.lease(a) === c1)
    }

    @Test func keepsAtMostMaxIdlePerEndpoint() throws {
        let conns = try (0..<3).map { _ in try connection(to: a) }
        for (conn, _) in conns { pool.release(conn) }
        #expect(pool.idleCount == 2)
        #expect(!conns[2].1.isActive)  // the third closed on release
        let (other, _) = try connection(to: b)
        pool.release(other)  // another endpoint has its own bound
        #expect(pool.idleCount == 3)
    }

    @Test func aConnectionThatCannotBeReusedIsClosedNotPooled() throws {
        let (conn, channel) = try connection(to: a)
        conn.reusable = false
        pool.release(conn)
        #expect(pool.idleCount == 0 && !channel.isActive)
        #expect(pool.lease(a) == nil)
    }

    @Test func aPeerClosingAnIdleConnectionTakesItOut() throws {
        let (c1, ch1) = try connection(to: a)
        let (c2, _) = try connection(to: a)
        pool.release(c1)
        pool.release(c2)
        try ch1.close().wait()
        #expect(pool.idleCount == 1)
        #expect(pool.lease(a) === c2)
        #expect(pool.lease(a) == nil)
    }

    @Test func idleConnectionsExpireAndEmptyListsLeave() throws {
        let (old, oldChannel) = try connection(to: a)
        pool.release(old)
        let released = old.idleSince
        let (recent, recentChannel) = try connection(to: a)
        pool.release(recent)
        recent.idleSince = released + .seconds(5)
        // 11 s after the first release: only the first one is past the 10 s idle timeout.
        pool.sweep(now: released + .seconds(11))
        #expect(pool.idleCount == 1 && !oldChannel.isActive && recentChannel.isActive)
        let list = try #require(recent.idleList)
        #expect(list.pooled)
        // Leased: the list is empty; the next sweep drops it, and the release after that finds the
        // endpoint again (a new list) rather than the dropped one.
        #expect(pool.lease(a) === recent)
        pool.sweep(now: released + .seconds(12))
        #expect(!list.pooled)
        pool.release(recent)
        #expect(recent.idleList !== list && recent.idleList?.pooled == true)
        #expect(pool.idleCount == 1)
        #expect(pool.lease(a) === recent)
    }

    @Test func aConnectionReleasedToAnotherPoolJoinsThatPoolsList() throws {
        let (conn, _) = try connection(to: a)
        pool.release(conn)
        #expect(pool.lease(a) === conn)
        let other = UpstreamPool(eventLoop: loop, shared: shared)
        other.release(conn)
        #expect(pool.idleCount == 0 && other.idleCount == 1)
        #expect(pool.lease(a) == nil)
        #expect(other.lease(a) === conn)
    }

    @Test func closeIdleAndCloseAllEmptyThePool() throws {
        let (c1, ch1) = try connection(to: a)
        let (c2, ch2) = try connection(to: b)
        pool.release(c1)
        pool.release(c2)
        pool.closeIdle(except: [b], keepAnyInboundTarget: false)
        #expect(pool.idleCount == 1 && !ch1.isActive && ch2.isActive)
        #expect(c1.idleList?.pooled == false)
        #expect(pool.lease(a) == nil)
        pool.closeAll()
        #expect(pool.idleCount == 0 && !ch2.isActive)
        #expect(pool.lease(b) == nil)
    }
}
