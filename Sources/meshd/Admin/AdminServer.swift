import Logging
import MeshCore
import NIOCore
import NIOHTTP1
import NIOPosix

/// The admin API (loopback by default): `/live`, `/ready`, `/metrics`, `/config`, `/routes`,
/// `/services`, `/log-level`, `POST /shutdown` (loopback callers only). JSON unless noted.
final class AdminHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    let runtime: MeshRuntime
    private var head: HTTPRequestHead?
    private var bodyBytes = 0
    private var body = ByteBuffer()
    static let maxBody = 64 * 1024

    init(runtime: MeshRuntime) { self.runtime = runtime }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let h):
            head = h
            body.clear()
        case .body(var b):
            if body.readableBytes + b.readableBytes <= Self.maxBody { body.writeBuffer(&b) }
        case .end:
            guard let head else { return }
            self.head = nil
            let remote = context.channel.remoteAddress
            let keepAlive = head.isKeepAlive
            let bodyText = body.readString(length: body.readableBytes) ?? ""
            runtime.handleAdmin(on: context.eventLoop, method: head.method, uri: head.uri, body: bodyText, remote: remote)
                .assumeIsolated()
                .whenComplete { result in
                    let (status, contentType, text): (HTTPResponseStatus, String, String)
                    switch result {
                    case .success(let r): (status, contentType, text) = r
                    case .failure(let e): (status, contentType, text) = (.internalServerError, "text/plain", "\(e)\n")
                    }
                    var headers = HTTPHeaders()
                    headers.add(name: "content-type", value: contentType)
                    headers.add(name: "content-length", value: String(text.utf8.count))
                    if !keepAlive { headers.add(name: "connection", value: "close") }
                    context.write(
                        self.wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: status, headers: headers))), promise: nil)
                    context.write(self.wrapOutboundOut(.body(.byteBuffer(context.channel.allocator.buffer(string: text)))), promise: nil)
                    let done = context.writeAndFlush(self.wrapOutboundOut(.end(nil)))
                    if !keepAlive { done.assumeIsolated().whenComplete { _ in context.close(promise: nil) } }
                }
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        context.close(promise: nil)
    }
}
