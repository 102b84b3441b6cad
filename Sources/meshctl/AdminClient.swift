import NIOCore
import NIOHTTP1
import NIOPosix

/// A minimal HTTP/1.1 client for meshd's admin API (meshctl reads nothing else).
enum AdminClient {
    struct Response: Sendable {
        var status: Int
        var body: String
    }

    struct Failure: Error, CustomStringConvertible {
        var description: String
    }

    static func request(admin: String, method: HTTPMethod = .GET, path: String, body: String = "", timeout: TimeAmount = .seconds(5))
        async throws -> Response
    {
        let parts = admin.split(separator: ":")
        guard parts.count >= 2, let port = Int(parts.last!) else {
            throw Failure(description: "--admin must be HOST:PORT, got '\(admin)'")
        }
        let host = parts.dropLast().joined(separator: ":").trimmingCharacters(in: ["[", "]"])
        let group = MultiThreadedEventLoopGroup.singleton
        let promise = group.next().makePromise(of: Response.self)
        let channel: Channel
        do {
            channel = try await ClientBootstrap(group: group)
                .connectTimeout(timeout)
                .channelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.addHTTPClientHandlers()
                        try channel.pipeline.syncOperations.addHandler(Collector(promise: promise))
                    }
                }
                .connect(host: host, port: port).get()
        } catch {
            promise.fail(error)  // never left pending (NIO reports leaked promises in debug builds)
            throw Failure(description: "cannot reach meshd admin at \(admin): \(error)")
        }
        var headers = HTTPHeaders()
        headers.add(name: "host", value: admin)
        headers.add(name: "content-length", value: String(body.utf8.count))
        headers.add(name: "connection", value: "close")
        let head = HTTPRequestHead(version: .http1_1, method: method, uri: path, headers: headers)
        channel.write(HTTPClientRequestPart.head(head), promise: nil)
        if !body.isEmpty {
            channel.write(HTTPClientRequestPart.body(.byteBuffer(ByteBuffer(string: body))), promise: nil)
        }
        channel.writeAndFlush(HTTPClientRequestPart.end(nil), promise: nil)
        let timer = group.next().scheduleTask(in: timeout) { promise.fail(Failure(description: "admin request timed out")) }
        defer { timer.cancel() }
        let response = try await promise.futureResult.get()
        try? await channel.close()
        return response
    }

    final class Collector: ChannelInboundHandler {
        typealias InboundIn = HTTPClientResponsePart
        let promise: EventLoopPromise<Response>
        var status = 0
        var body = ByteBuffer()

        init(promise: EventLoopPromise<Response>) { self.promise = promise }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            switch unwrapInboundIn(data) {
            case .head(let h): status = Int(h.status.code)
            case .body(var b): body.writeBuffer(&b)
            case .end: promise.succeed(Response(status: status, body: body.readString(length: body.readableBytes) ?? ""))
            }
        }

        func channelInactive(context: ChannelHandlerContext) {
            promise.fail(Failure(description: "admin connection closed before a response"))
        }

        func errorCaught(context: ChannelHandlerContext, error: Error) {
            promise.fail(error)
            context.close(promise: nil)
        }
    }
}
