import Logging
import MeshCore
import NIOCore
import NIOEmbedded
import NIOHPACK
import NIOHTTP1
import NIOHTTP2
import Testing

@testable import MeshProxy

/// A proxy handler's side of an upstream stream: records what the stream delivers.
private final class RecordingOwner: UpstreamOwner {
    var parts: [HTTPClientResponsePart] = []
    var closed: [Error?] = []
    var writableEvents = 0
    var readCompletes = 0
    var downstreamWritable = true

    func upstreamRead(_ part: HTTPClientResponsePart, from conn: UpstreamConnection) { parts.append(part) }
    func upstreamHead(_ head: ResponseHead, from conn: UpstreamConnection) {
        switch head {
        case .http1(let head): parts.append(.head(head))
        case .h2(let response): parts.append(.head(HTTP2Conversion.http1Head(response, requestMethod: .GET)))
        }
    }
    func upstreamReadComplete(from conn: UpstreamConnection) { readCompletes += 1 }
    func upstreamWritabilityChanged(writable: Bool, from conn: UpstreamConnection) { if writable { writableEvents += 1 } }
    func upstreamClosed(error: Error?, from conn: UpstreamConnection) { closed.append(error) }
}

private struct StreamNotGranted: Error {}

/// A response block checked, then as an HTTP/1.1 client gets it.
private func responseHead(
    _ block: HPACKHeaders, requestMethod: HTTPMethod, endStream: Bool
) throws(HTTP2FieldCheck.Problem) -> HTTPResponseHead {
    HTTP2Conversion.http1Head(try HTTP2Conversion.response(block, endStream: endStream), requestMethod: requestMethod)
}

/// `HTTP2UpstreamConnection` at frame level on an EmbeddedChannel (without NIO's HTTP/2 handler: the
/// test plays it, reading the frames meshd writes and feeding the endpoint's frames and NIO's events).
@Suite("Upstream HTTP/2 streams at frame level")
struct HTTP2UpstreamTests {
    let channel = EmbeddedChannel()
    let connection: HTTP2UpstreamConnection
    let flushes = FlushBatch()

    init() throws {
        let snapshot = try ResolvedSnapshot.resolve(try ConfigLoader.load(yaml: "mode: sidecar\n"), version: 1)
        let shared = SharedRuntime(metrics: MeshMetrics(), logger: Logger(label: "test"), snapshot: snapshot)
        connection = HTTP2UpstreamConnection(
            address: try SocketAddress(ipAddress: "127.0.0.1", port: 1), shared: shared, counters: nil, maxStreams: 2,
            streamWindow: 65_536, flushes: flushes)
        try channel.pipeline.syncOperations.addHandler(connection)
        try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
        connection.connected()
    }

    private func frames() throws -> [HTTP2Frame] {
        var out: [HTTP2Frame] = []
        while let f = try channel.readOutbound(as: HTTP2Frame.self) { out.append(f) }
        return out
    }

    private func stream(_ owner: RecordingOwner) throws -> UpstreamConnection {
        var granted: UpstreamConnection?
        connection.openStream(on: channel.eventLoop).assumeIsolated().whenSuccess { granted = $0 }
        guard let s = granted else { throw StreamNotGranted() }
        s.owner = owner
        return s
    }

    private static let get = HTTPRequestHead(
        version: .http1_1, method: .GET, uri: "/a?b=1", headers: ["Host": "orders:8080", "X-Request-Id": "abc", "connection": "keep-alive"])

    private static func response(_ fields: [(String, String)]) -> HPACKHeaders {
        HPACKHeaders(fields.map { ($0.0, $0.1) })
    }

    private func deliver(_ stream: Int, _ payload: HTTP2Frame.FramePayload) throws {
        try channel.writeInbound(HTTP2Frame(streamID: HTTP2StreamID(stream), payload: payload))
        channel.pipeline.fireChannelReadComplete()
    }

    private func closeEvent(_ stream: Int, _ reason: HTTP2ErrorCode? = nil) {
        channel.pipeline.fireUserInboundEventTriggered(StreamClosedEvent(streamID: HTTP2StreamID(stream), reason: reason))
    }

    @Test func theConnectionWindowIsRaisedOncePrefaceAndConnectAreDone() throws {
        let sent = try frames()
        #expect(sent.count == 1)
        guard case .windowUpdate(let increment) = sent.first?.payload else {
            Issue.record("expected a WINDOW_UPDATE, got \(sent)")
            return
        }
        #expect(sent.first?.streamID == .rootStream)
        #expect(increment == 2 * 65_536 - 65_535, "one stream window per stream the connection may carry")
    }

    @Test func aGetIsOneHeadersFrameWithEndStreamAndStreamsTakeIdsInOrder() throws {
        _ = try frames()
        let a = RecordingOwner()
        let b = RecordingOwner()
        let first = try stream(a)
        let second = try stream(b)
        // The second stream's request goes out first: it takes the first id.
        second.write(.head(Self.get))
        second.write(.end(nil))
        second.flush()
        first.write(.head(Self.get))
        first.flush()
        let sent = try frames()
        #expect(sent.map(\.streamID) == [1, 3])
        guard case .headers(let h1) = sent[0].payload, case .headers(let h3) = sent[1].payload else {
            Issue.record("expected HEADERS, got \(sent)")
            return
        }
        #expect(h1.endStream, "a request without a body ends the stream in its HEADERS")
        #expect(!h3.endStream, "a flushed head whose request goes on does not")
        let names = h1.headers.map(\.name)
        #expect(names == [":method", ":scheme", ":authority", ":path", "x-request-id"])
        #expect(h1.headers.first(name: ":authority") == "orders:8080")
        #expect(h1.headers.first(name: ":path") == "/a?b=1")
    }

    @Test func streamsBeyondThePeersLimitWaitForOneToClose() throws {
        _ = try frames()
        try deliver(0, .settings(.settings([HTTP2Setting(parameter: .maxConcurrentStreams, value: 1)])))
        let a = RecordingOwner()
        let first = try stream(a)
        let waiting = connection.openStream(on: channel.eventLoop)
        var granted: UpstreamConnection?
        waiting.assumeIsolated().whenSuccess { granted = $0 }
        #expect(granted == nil, "the endpoint allows one stream at a time")
        first.write(.head(Self.get))
        first.write(.end(nil))
        first.flush()
        try deliver(1, .headers(.init(headers: Self.response([(":status", "204")]), endStream: true)))
        #expect(granted == nil, "a stream is open until NIO closes it")
        closeEvent(1)
        #expect(granted != nil)
        #expect(a.closed.isEmpty, "a stream that got its whole response closes quietly")
        #expect(connection.streams == 1)
    }

    @Test func responseFramesBecomeResponsePartsAndCreditFollowsTheClient() throws {
        _ = try frames()
        let owner = RecordingOwner()
        let s = try stream(owner)
        s.write(.head(Self.get))
        s.write(.end(nil))
        s.flush()
        _ = try frames()
        try deliver(1, .headers(.init(headers: Self.response([(":status", "200"), ("content-type", "text/plain")]))))
        let half = ByteBuffer(repeating: 0x61, count: 32_768)
        owner.downstreamWritable = false
        try deliver(1, .data(.init(data: .byteBuffer(half))))
        #expect(try frames().allSatisfy { $0.streamID == .rootStream }, "no stream credit while its client is not taking what it got")
        owner.downstreamWritable = true
        s.resumeReading()
        let credit = try frames()
        guard case .windowUpdate(let n) = credit.first?.payload else {
            Issue.record("expected a WINDOW_UPDATE, got \(credit)")
            return
        }
        #expect(credit.first?.streamID == 1 && n == 32_768)
        try deliver(1, .headers(.init(headers: Self.response([("grpc-status", "0")]), endStream: true)))
        guard owner.parts.count == 3, case .head(let head) = owner.parts[0], case .body(let body) = owner.parts[1],
            case .end(let trailers) = owner.parts[2]
        else {
            Issue.record("expected head, body, end: \(owner.parts)")
            return
        }
        #expect(head.status == .ok)
        #expect(head.headers["transfer-encoding"] == ["chunked"], "an HTTP/1.1 client sees a body of unknown length as chunked")
        #expect(body.readableBytes == 32_768)
        #expect(trailers?["grpc-status"] == ["0"])
        #expect(owner.readCompletes == 3)
    }

    @Test func aResetStreamTellsItsOwnerWhy() throws {
        _ = try frames()
        let owner = RecordingOwner()
        let s = try stream(owner)
        s.write(.head(Self.get))
        s.flush()
        try deliver(1, .rstStream(.refusedStream))
        closeEvent(1, .refusedStream)
        guard owner.closed.count == 1, case .reset(.refusedStream) = owner.closed[0] as? UpstreamHTTP2Error else {
            Issue.record("expected the reset's code, got \(owner.closed)")
            return
        }
        #expect(connection.streams == 0)
    }

    @Test func closingAnOpenStreamResetsItAndAnUnsentOneJustGivesItsSlotBack() throws {
        _ = try frames()
        let owner = RecordingOwner()
        let sent = try stream(owner)
        sent.write(.head(Self.get))
        sent.flush()
        _ = try frames()
        sent.close()
        let reset = try frames()
        guard case .rstStream(.cancel) = reset.first?.payload else {
            Issue.record("expected RST_STREAM(CANCEL), got \(reset)")
            return
        }
        #expect(owner.closed.isEmpty, "the owner that closed it is not told")
        let other = RecordingOwner()
        let unsent = try stream(other)
        #expect(connection.streams == 2)
        unsent.close()
        #expect(try frames().isEmpty)
        #expect(connection.streams == 1, "the reset stream's slot comes back with NIO's close event")
        closeEvent(1, .cancel)
        #expect(connection.streams == 0)
    }

    @Test func requestDataHeldByTheEndpointsWindowMakesTheStreamUnwritable() throws {
        _ = try frames()
        let owner = RecordingOwner()
        let s = try stream(owner)
        s.write(.head(HTTPRequestHead(version: .http1_1, method: .POST, uri: "/up", headers: ["host": "orders"])))
        #expect(s.isWritable)
        s.write(.body(.byteBuffer(ByteBuffer(repeating: 1, count: HTTP2UpstreamConnection.streamHighWater))))
        #expect(!s.isWritable, "written, not yet sent")
        s.flush()  // EmbeddedChannel completes the writes' promises on flush: the bytes left
        #expect(s.isWritable)
        #expect(owner.writableEvents == 1)
    }

    @Test func goawayFailsTheStreamsWaitingAndTheConnectionTakesNoMore() throws {
        _ = try frames()
        let owners = [RecordingOwner(), RecordingOwner()]
        let streams = try owners.map { try stream($0) }
        let waiting = connection.openStream(on: channel.eventLoop)
        var failed = false
        waiting.assumeIsolated().whenFailure { _ in failed = true }
        try deliver(0, .goAway(lastStreamID: .rootStream, errorCode: .noError, opaqueData: nil))
        #expect(failed)
        #expect(!connection.hasCapacity)
        #expect(streams.allSatisfy { $0.owner != nil }, "the streams open finish")
    }

    @Test func aResponseWithoutAValidStatusIsAProtocolErrorOnThatStream() throws {
        _ = try frames()
        let owner = RecordingOwner()
        let s = try stream(owner)
        s.write(.head(Self.get))
        s.write(.end(nil))
        s.flush()
        _ = try frames()
        try deliver(1, .headers(.init(headers: Self.response([(":status", "2000")]))))
        guard case .rstStream(.protocolError) = try frames().first?.payload else {
            Issue.record("expected RST_STREAM(PROTOCOL_ERROR)")
            return
        }
        #expect(owner.closed.count == 1)
    }

    /// A GET written and flushed while a read is in progress on the loop: its HEADERS are held.
    private func getDuringARead(_ owner: RecordingOwner) throws {
        let s = try stream(owner)
        _ = try frames()  // (the connection's own, from connecting)
        flushes.readStarted()
        s.write(.head(Self.get))
        s.write(.end(nil))
        s.flush()
        #expect(try frames().isEmpty, "held while another connection's read is in progress")
    }

    @Test func aFlushDuringAReadOnTheLoopWaitsForItsEnd() throws {
        let owner = RecordingOwner()
        try getDuringARead(owner)
        flushes.readEnded()
        guard case .headers(let h) = try frames().first?.payload, h.endStream else {
            Issue.record("expected the HEADERS with END_STREAM once the read ended")
            return
        }
        // Outside reads, a flush is at once.
        let other = RecordingOwner()
        let t = try stream(other)
        t.write(.head(Self.get))
        t.write(.end(nil))
        t.flush()
        #expect(try frames().count == 1)
    }

    @Test func theTickSendsFlushesAReadForgotToEnd() throws {
        let owner = RecordingOwner()
        try getDuringARead(owner)
        flushes.settle(logger: Logger(label: "test"))
        #expect(try frames().count == 1)
        #expect(!flushes.isHolding)
    }
}

@Suite("HTTP/1 messages as HTTP/2 header blocks")
struct HTTP2ConversionTests {
    @Test func requestHeadersDropConnectionFieldsAndLowercaseNames() {
        let head = HTTPRequestHead(
            version: .http1_1, method: .POST, uri: "/x",
            headers: [
                "Host": "a", "Connection": "keep-alive", "Keep-Alive": "5", "Transfer-Encoding": "chunked", "Upgrade": "h2c",
                "Proxy-Connection": "x", "TE": "trailers", "X-Forwarded-For": "10.0.0.1", "Authorization": "secret",
            ])
        let block = HTTP2Conversion.requestHeaders(head)
        #expect(block.map(\.name) == [":method", ":scheme", ":authority", ":path", "te", "x-forwarded-for", "authorization"])
        #expect(block.map(\.indexable).last == .neverIndexed, "credentials never enter an HPACK table")
        let gzip = HTTPRequestHead(version: .http1_1, method: .GET, uri: "/", headers: ["host": "a", "te": "gzip"])
        #expect(HTTP2Conversion.requestHeaders(gzip).first(name: "te") == nil, "TE is only `trailers` in HTTP/2")
    }

    @Test func primedRequestsLeaveTheTracingNamesInTheTable() throws {
        func request(_ n: Int) -> HTTPRequestHead {
            HTTPRequestHead(
                version: .http1_1, method: .GET, uri: "/",
                headers: ["host": "a", "x-request-id": "0000000\(n)-aaaa-4bbb-8ccc-dddddddddddd", "traceparent": "00-\(n)-01"])
        }
        let plain = HTTP2Conversion.requestHeaders(request(1))
        #expect(plain.map(\.indexable) == [.indexable, .indexable, .indexable, .nonIndexable, .nonIndexable, .nonIndexable])
        let primed = HTTP2Conversion.requestHeaders(request(1), primeNames: true)
        #expect(primed.map(\.indexable) == [.indexable, .indexable, .indexable, .nonIndexable, .indexable, .indexable])
        // What NIO's encoder makes of the second request of a connection, after a primed first or not.
        func secondBlockBytes(afterPrimed: Bool) throws -> Int {
            var encoder = HPACKEncoder(allocator: ByteBufferAllocator())
            var buffer = ByteBuffer()
            try encoder.encode(headers: afterPrimed ? primed : plain, to: &buffer)
            buffer.clear()
            try encoder.encode(headers: HTTP2Conversion.requestHeaders(request(2)), to: &buffer)
            return buffer.readableBytes
        }
        // A literal name is a type byte, a length byte and its Huffman code (9 bytes for x-request-id,
        // 8 for traceparent); a dynamic-table index past 15 takes two bytes: 11 → 2 and 10 → 2.
        #expect(try secondBlockBytes(afterPrimed: false) - secondBlockBytes(afterPrimed: true) == 9 + 8)
    }

    @Test func responseHeadsSayHowAnHTTP1ClientSeesTheirEnd() throws {
        let ok = HPACKHeaders([(":status", "200")])
        #expect(try responseHead(ok, requestMethod: .GET, endStream: true).headers["content-length"] == ["0"])
        #expect(try responseHead(ok, requestMethod: .GET, endStream: false).headers["transfer-encoding"] == ["chunked"])
        #expect(try responseHead(ok, requestMethod: .HEAD, endStream: false).headers.isEmpty)
        let noContent = HPACKHeaders([(":status", "204")])
        #expect(try responseHead(noContent, requestMethod: .GET, endStream: true).headers.isEmpty)
        let sized = HPACKHeaders([(":status", "200"), ("content-length", "3")])
        #expect(try responseHead(sized, requestMethod: .GET, endStream: false).headers["transfer-encoding"] == [])
    }

    @Test func aStatusMustBeThreeDigits() {
        for bad in ["20", "2000", "abc", "099", "600", "2 0"] {
            #expect(throws: HTTP2FieldCheck.Problem.self, "\(bad)") {
                try responseHead(HPACKHeaders([(":status", bad)]), requestMethod: .GET, endStream: true)
            }
        }
        #expect(throws: HTTP2FieldCheck.Problem.missingPseudoHeaders) {
            try responseHead(HPACKHeaders([("a", "b")]), requestMethod: .GET, endStream: true)
        }
    }

    @Test func trailersLoseNoFieldAndKeepNoPseudoHeader() throws {
        let trailers = try HTTP2Conversion.httpTrailers(HPACKHeaders([("grpc-status", "0"), ("grpc-message", "ok")]))
        #expect(trailers["grpc-status"] == ["0"] && trailers["grpc-message"] == ["ok"])
        #expect(HTTP2Conversion.trailers(["Grpc-Status": "0"]).map(\.name) == ["grpc-status"])
        #expect(throws: HTTP2FieldCheck.Problem.unexpectedPseudoHeader(":status")) {
            try HTTP2Conversion.httpTrailers(HPACKHeaders([(":status", "200")]))
        }
    }

    @Test func requestHeadsAreCheckedAsTheyAreRead() throws {
        let get = try HTTP2Conversion.request(
            HPACKHeaders([(":method", "GET"), (":scheme", "http"), (":authority", "a:80"), (":path", "/x"), ("x", "1")]), endStream: true)
        #expect(get.method == .GET && get.uri == "/x" && get.authority == "a:80" && get.fieldCount == 1)
        let getHead = HTTP2Conversion.http1Head(get)
        #expect(getHead.uri == "/x" && getHead.headers.map(\.name) == ["x"], "Host comes from the authority meshd routed on")
        let connect = try HTTP2Conversion.request(HPACKHeaders([(":method", "CONNECT"), (":authority", "b:443")]), endStream: false)
        #expect(connect.method == .CONNECT && connect.uri == "b:443")
        let post = try HTTP2Conversion.request(HPACKHeaders([(":method", "POST"), (":scheme", "http"), (":path", "/")]), endStream: false)
        #expect(HTTP2Conversion.http1Head(post).headers["transfer-encoding"] == ["chunked"])
        let emptyPost = try HTTP2Conversion.request(
            HPACKHeaders([(":method", "POST"), (":scheme", "http"), (":path", "/")]), endStream: true)
        #expect(HTTP2Conversion.http1Head(emptyPost).headers["content-length"] == ["0"])
        #expect(throws: HTTP2FieldCheck.Problem.invalidName("X-Upper")) {
            try HTTP2Conversion.request(
                HPACKHeaders([(":method", "GET"), (":scheme", "http"), (":path", "/"), ("X-Upper", "1")]), endStream: true)
        }
        #expect(throws: HTTP2FieldCheck.Problem.invalidValue(name: ":path")) {
            try HTTP2Conversion.request(
                HPACKHeaders([(":method", "GET"), (":scheme", "http"), (":path", "/a HTTP/1.1\r\nx: y")]), endStream: true)
        }
    }

    /// h2 → h2: the upstream's block is the client's, rewritten — no HTTP/1 head in between.
    @Test func anHTTP2RequestGoesOnAsItsOwnBlockRewritten() throws {
        var block = HPACKHeaders([(":method", "POST"), (":scheme", "https"), (":authority", "a:80"), (":path", "/p?q=1")])
        block.add(name: "host", value: "a:80")
        block.add(name: "te", value: "trailers")
        block.add(name: "x-forwarded-for", value: "10.0.0.1")
        block.add(name: "authorization", value: "secret", indexing: .neverIndexed)
        block.add(name: "user-agent", value: " padded\t")
        let request = try HTTP2Conversion.request(block, endStream: false)
        let out = HTTP2Conversion.upstreamBlock(
            request, authority: "svc", uri: nil, dropped: ["x-forwarded-for"],
            added: [("x-forwarded-for", "10.0.0.1, 10.0.0.2"), ("host", "svc"), ("x-request-id", "r1")])
        #expect(
            out.map(\.name) == [
                ":method", ":scheme", ":authority", ":path", "te", "authorization", "user-agent", "x-forwarded-for", "x-request-id",
            ])
        #expect(out.first(name: ":authority") == "svc" && out.first(name: ":scheme") == "http" && out.first(name: ":path") == "/p?q=1")
        #expect(out.first(name: "user-agent") == "padded", "RFC 9113 §8.2.1: no leading or trailing whitespace")
        #expect(out.first(name: "x-forwarded-for") == "10.0.0.1, 10.0.0.2")
        let indexing = Dictionary(out.map { ($0.name, $0.indexable) }, uniquingKeysWith: { a, _ in a })
        #expect(indexing["authorization"] == .neverIndexed, "RFC 7541 §7.1.3: never-indexed stays so")
        #expect(indexing[":path"] == .nonIndexable && indexing["x-request-id"] == .nonIndexable && indexing["te"] == .indexable)
        #expect(HTTP2Conversion.primed(out).first { $0.name == "x-request-id" }?.indexable == .indexable)
        #expect(HTTP2Conversion.primed(out).first { $0.name == "authorization" }?.indexable == .neverIndexed)
        let rewritten = HTTP2Conversion.upstreamBlock(request, authority: "b", uri: "/other", dropped: [], added: [])
        #expect(rewritten.first(name: ":path") == "/other" && rewritten.first(name: ":authority") == "b")
        // The same block, were it to reach an HTTP/1.1 connection.
        let head = HTTP2Conversion.http1Head(forwarded: out)
        #expect(head.method == .POST && head.uri == "/p?q=1" && head.headers["host"] == ["svc"] && head.headers["x-request-id"] == ["r1"])
    }

    /// h2 → h2: a response block goes to the client as it came, unless a field needs less indexing or
    /// a value trimming.
    @Test func anHTTP2ResponseGoesOnAsItCame() throws {
        var block = HPACKHeaders()
        block.add(name: ":status", value: "200")
        block.add(name: "content-type", value: "application/grpc")
        block.add(name: "grpc-status", value: "0")
        block.add(name: "content-length", value: "5", indexing: .nonIndexable)
        let response = try HTTP2Conversion.response(block, endStream: true)
        #expect(response.status == 200 && response.scan.grpcStatus == "0" && response.scan.contentType == "application/grpc")
        #expect(!response.rewrite && HTTP2Conversion.clientBlock(response) == block)
        var other = block
        other.add(name: "server", value: "app", indexing: .nonIndexable)  // not indexed by its sender: stays so
        other.add(name: "set-cookie", value: "a=b", indexing: .neverIndexed)
        #expect(try !HTTP2Conversion.response(other, endStream: false).rewrite)
        other.add(name: "etag", value: "\"1\"")  // indexed by its sender; meshd does not index an etag
        other.add(name: "x-app", value: "padded ")
        let rewritten = try HTTP2Conversion.response(other, endStream: false)
        #expect(rewritten.rewrite)
        let out = HTTP2Conversion.clientBlock(rewritten)
        #expect(out.map(\.name) == other.map(\.name) && out.first(name: "x-app") == "padded")
        let indexing = Dictionary(out.map { ($0.name, $0.indexable) }, uniquingKeysWith: { a, _ in a })
        #expect(indexing["etag"] == .nonIndexable && indexing["server"] == .nonIndexable && indexing["x-app"] == .indexable)
        #expect(indexing["set-cookie"] == .neverIndexed && indexing["content-type"] == .indexable)
        #expect(throws: HTTP2FieldCheck.Problem.connectionSpecificField("connection")) {
            try HTTP2Conversion.response(HPACKHeaders([(":status", "200"), ("connection", "close")]), endStream: true)
        }
    }
}
