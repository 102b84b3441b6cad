import Atomics
import Logging
import MeshCore
import NIOCore
import NIOEmbedded
import NIOHPACK
import NIOHTTP2
import Testing

@testable import MeshProxy

/// `HTTP2DownstreamConnection` at frame level on an EmbeddedChannel, without NIO's HTTP/2 handler:
/// the test plays the client's frames (as NIO would deliver them: framing and stream states checked,
/// header blocks left to meshd's `HTTP2FieldCheck`) and NIO's stream
/// events, and reads the frames meshd writes. The requests here are answered by meshd itself (no
/// route, no endpoint), so no upstream is involved.
@Suite("Downstream HTTP/2 streams at frame level")
struct HTTP2DownstreamTests {
    static let config = """
        services: [ { name: empty, endpoints: [] } ]
        routes:
          - { match: { authority: empty }, service: empty }
        http2: { initialWindowSize: 65536, maxConcurrentStreams: 4 }
        """

    let channel = EmbeddedChannel()
    let metrics = MeshMetrics()
    let guardHandler: ConnectionGuard

    init() throws {
        let config = try ConfigLoader.load(yaml: Self.config)
        let snapshot = try ResolvedSnapshot.resolve(config, version: 1)
        let shared = SharedRuntime(metrics: metrics, logger: Logger(label: "test"), snapshot: snapshot)
        let loop = LoopContext(eventLoop: channel.eventLoop, index: 0, shared: shared, snapshot: snapshot, seed: 1)
        guardHandler = ConnectionGuard(
            direction: .outbound, shared: shared, allowedSources: nil, openCount: ManagedAtomic(0),
            maxConnections: config.http.maxConnections)
        guardHandler.watchHTTP2(loop: loop, idleTimeout: config.http.idleTimeout, firstRequestTimeout: config.http.headerReadTimeout)
        try channel.pipeline.syncOperations.addHandler(
            HTTP2DownstreamConnection(
                direction: .outbound, loop: loop, connectionGuard: guardHandler, streamWindow: 65_536, maxStreams: 4))
        try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
    }

    private func frames() throws -> [HTTP2Frame] {
        var out: [HTTP2Frame] = []
        while let f = try channel.readOutbound(as: HTTP2Frame.self) { out.append(f) }
        return out
    }

    private func request(
        _ stream: Int, authority: String, extra: [(String, String)] = [], endStream: Bool = true
    ) throws {
        let block = HPACKHeaders(
            [(":method", "POST"), (":scheme", "http"), (":authority", authority), (":path", "/svc/Call")] + extra)
        try channel.writeInbound(
            HTTP2Frame(streamID: HTTP2StreamID(stream), payload: .headers(.init(headers: block, endStream: endStream))))
        channel.pipeline.fireChannelReadComplete()
    }

    private func closed(_ stream: Int, _ reason: HTTP2ErrorCode? = nil) {
        channel.pipeline.fireUserInboundEventTriggered(StreamClosedEvent(streamID: HTTP2StreamID(stream), reason: reason))
    }

    @Test func theClientsPrefaceRaisesTheConnectionWindow() throws {
        try channel.writeInbound(HTTP2Frame(streamID: .rootStream, payload: .settings(.settings([]))))
        let sent = try frames()
        guard case .windowUpdate(let increment) = sent.first?.payload else {
            Issue.record("expected a WINDOW_UPDATE, got \(sent)")
            return
        }
        #expect(sent.first?.streamID == .rootStream && increment == 4 * 65_536 - 65_535)
    }

    @Test func meshdsOwnReplyIsAHeadThenItsBodyEndingTheStream() throws {
        try request(1, authority: "payments")
        let sent = try frames()
        guard sent.count == 2, case .headers(let head) = sent[0].payload, case .data(let body) = sent[1].payload else {
            Issue.record("expected HEADERS and DATA, got \(sent)")
            return
        }
        #expect(sent.allSatisfy { $0.streamID == 1 })
        #expect(head.headers.first(name: ":status") == "404" && !head.endStream)
        #expect(head.headers.first(name: "x-meshd-error") == "no-route")
        #expect(head.headers.map(\.name).first == ":status", "the pseudo-header comes first")
        #expect(body.endStream)
        #expect(guardHandler.openStreams == 1, "the stream is open until NIO closes it")
        closed(1)
        #expect(guardHandler.openStreams == 0)
    }

    @Test func aGRPCReplyIsOneHeadersFrameEndingTheStream() throws {
        try request(3, authority: "empty", extra: [("content-type", "application/grpc"), ("te", "trailers")])
        let sent = try frames()
        guard sent.count == 1, case .headers(let block) = sent[0].payload else {
            Issue.record("expected one HEADERS frame, got \(sent)")
            return
        }
        #expect(block.endStream)
        #expect(block.headers.first(name: ":status") == "200")
        #expect(block.headers.first(name: "grpc-status") == "14", "UNAVAILABLE: the service has no endpoints")
        #expect(block.headers.first(name: "content-length") == nil)
    }

    @Test func aRequestBodyStillComingIsCreditedAndDroppedAfterTheReply() throws {
        try request(5, authority: "payments", endStream: false)
        _ = try frames()
        let half = ByteBuffer(repeating: 0x61, count: 32_768)
        try channel.writeInbound(HTTP2Frame(streamID: 5, payload: .data(.init(data: .byteBuffer(half)))))
        channel.pipeline.fireChannelReadComplete()
        let credit = try frames()
        #expect(
            credit.contains { f in
                if case .windowUpdate(32_768) = f.payload { return f.streamID == 5 }
                return false
            }, "meshd reads (and drops) the rest of an answered request: the client may send it: \(credit)")
    }

    @Test func aHeadersBlockWithoutAMethodResetsItsStream() throws {
        let block = HPACKHeaders([(":scheme", "http"), (":authority", "empty"), (":path", "/")])
        try channel.writeInbound(HTTP2Frame(streamID: 7, payload: .headers(.init(headers: block, endStream: true))))
        guard case .rstStream(.protocolError) = try frames().first?.payload else {
            Issue.record("expected RST_STREAM(PROTOCOL_ERROR)")
            return
        }
        #expect(guardHandler.openStreams == 0)
    }

    @Test func aStreamTheClientResetsIsForgotten() throws {
        // Answered at once (no route) while its request body is still to come, then reset by the client.
        try request(9, authority: "payments", endStream: false)
        _ = try frames()
        closed(9, .cancel)
        #expect(guardHandler.openStreams == 0)
        // Frames for the forgotten stream are ignored.
        try channel.writeInbound(HTTP2Frame(streamID: 9, payload: .data(.init(data: .byteBuffer(ByteBuffer(string: "x"))))))
        #expect(try frames().isEmpty)
    }
}
