import Atomics
import Logging
import MeshCore
import NIOCore
import NIOEmbedded
import NIOHTTP1

@testable import MeshProxy

/// meshd's downstream HTTP/1.1 pipeline (connection guard, NIO's HTTP codec, HTTPProxyHandler) on an
/// EmbeddedChannel: tests write request bytes and read what meshd answers, without sockets.
final class ProxyHarness {
    let channel: EmbeddedChannel
    let handler: HTTPProxyHandler
    let metrics: MeshMetrics
    /// The harness's time: `advance` moves it and runs the handler's timeout check at the new time.
    var clock = ManualClock()

    init(yaml: String, direction: Direction = .outbound) throws {
        let config = try ConfigLoader.load(yaml: yaml)
        metrics = MeshMetrics()
        let snapshot = try ResolvedSnapshot.resolve(config, version: 1)
        let shared = SharedRuntime(metrics: metrics, logger: Logger(label: "test"), snapshot: snapshot)
        channel = EmbeddedChannel()
        let loop = LoopContext(eventLoop: channel.eventLoop, index: 0, shared: shared, snapshot: snapshot, seed: 1)
        let guardHandler = ConnectionGuard(
            direction: direction, shared: shared, allowedSources: nil, openCount: ManagedAtomic(0),
            maxConnections: config.http.maxConnections)
        var limits = NIOHTTPDecoderLimitConfiguration()
        limits.maxHeaderListSize = config.http.maxHeaderBytes
        limits.maxHeaderFieldSize = config.http.maxHeaderBytes
        handler = HTTPProxyHandler(direction: direction, loop: loop, connectionGuard: guardHandler)
        let sync = channel.pipeline.syncOperations
        try sync.addHandler(guardHandler)
        try sync.configureHTTPServerPipeline(
            withPipeliningAssistance: false, withServerUpgrade: nil, withErrorHandling: false,
            withOutboundHeaderValidation: false, withEncoderConfiguration: .init(), withDecoderLimitConfiguration: limits)
        try sync.addHandler(handler)
        try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
        // Time starts where the connection's own clock started (its header-read timer).
        if case .idle(let since) = handler.state { clock = ManualClock(now: Int64(since.uptimeNanoseconds)) }
    }

    func advance(_ duration: MeshDuration) {
        clock.advance(duration)
        handler.checkTimeouts(now: .uptimeNanoseconds(UInt64(clock.now)))
    }

    func send(_ text: String) throws {
        try channel.writeInbound(channel.allocator.buffer(string: text))
    }

    func response() throws -> String {
        var out = ""
        while var buf = try channel.readOutbound(as: ByteBuffer.self) {
            out += buf.readString(length: buf.readableBytes) ?? ""
        }
        return out
    }

    func errorCount(_ kind: MeshError, _ direction: Direction = .outbound) -> Int {
        let text = metrics.registry.emitToString()
        let prefix = "meshd_errors_total{direction=\"\(direction.label)\",kind=\"\(kind.rawValue)\"} "
        guard let line = text.split(separator: "\n").first(where: { $0.hasPrefix(prefix) }) else { return 0 }
        return Int(line.dropFirst(prefix.count)) ?? 0
    }
}

/// Simulated time for MeshCore's state machines (uptime nanoseconds, as their events carry it).
struct ManualClock {
    private(set) var now: Int64

    init(now: Int64 = 1_000_000_000) { self.now = now }

    mutating func advance(_ duration: MeshDuration) { now += duration.nanoseconds }
    mutating func advance(nanoseconds: Int64) { now += nanoseconds }
}
