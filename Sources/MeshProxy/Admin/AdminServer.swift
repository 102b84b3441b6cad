import Atomics
import CoreMetrics
import Logging
import MeshCore
import NIOCore
import NIOHTTP1
import NIOPosix

/// The admin API (loopback by default): `/live`, `/ready`, `/metrics`, `/config`, `/routes`,
/// `/services`, `/identity`, `/log-level`, `GET /tap` (live requests, streamed), `POST /shutdown`
/// (loopback callers only). JSON unless noted.
final class AdminHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    let runtime: MeshRuntime
    private var head: HTTPRequestHead?
    private var bodyBytes = 0
    private var body = ByteBuffer()
    static let maxBody = 64 * 1024
    /// This connection streams a tap (`GET /tap`) and serves nothing else.
    private var tap: TapHub.Subscriber?

    init(runtime: MeshRuntime) { self.runtime = runtime }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let h):
            head = h
            body.clear()
        case .body(var b):
            if body.readableBytes + b.readableBytes <= Self.maxBody { body.writeBuffer(&b) }
        case .end:
            guard let head, tap == nil else { return }
            self.head = nil
            if head.method == .GET, head.uri == "/tap" || head.uri.hasPrefix("/tap?") {
                startTap(context: context, uri: head.uri)
                return
            }
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

    /// `GET /tap?service=&route=&status=&direction=&max=`: a 200 with a chunked body of access-log
    /// lines (`application/x-ndjson`), one per matching request, until `max` (default 100) or the
    /// client leaves. See `TapHub` for the bounds.
    private func startTap(context: ChannelHandlerContext, uri: String) {
        let query = uri.firstIndex(of: "?").map { uri[uri.index(after: $0)...] } ?? ""
        let hub = runtime.shared.tap
        func refuse(_ status: HTTPResponseStatus, _ text: String) {
            var headers = HTTPHeaders()
            headers.add(name: "content-type", value: "text/plain")
            headers.add(name: "content-length", value: String(text.utf8.count))
            context.write(wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: status, headers: headers))), promise: nil)
            context.write(wrapOutboundOut(.body(.byteBuffer(context.channel.allocator.buffer(string: text)))), promise: nil)
            context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
        }
        let filter: TapFilter
        do {
            filter = try TapFilter(query: query)
        } catch {
            refuse(.badRequest, "\(error)\n")
            return
        }
        let subscriber = TapHub.Subscriber(filter: filter, channel: context.channel)
        guard hub.add(subscriber) else {
            refuse(.serviceUnavailable, "at most \(TapHub.maxTaps) taps at once\n")
            return
        }
        tap = subscriber
        var headers = HTTPHeaders()
        headers.add(name: "content-type", value: "application/x-ndjson")
        headers.add(name: "cache-control", value: "no-store")
        context.writeAndFlush(wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: .ok, headers: headers))), promise: nil)
    }

    func channelInactive(context: ChannelHandlerContext) {
        if let tap {
            runtime.shared.tap.remove(tap)
            self.tap = nil
        }
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        context.close(promise: nil)
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is IdleStateHandler.IdleStateEvent {
            // A tap's client sends nothing while it watches: the tap ends when it leaves or at `max`.
            if tap != nil { return }
            // Nothing read for `AdminLimits.idleTimeout`: an idle keep-alive, or a request that never ends.
            context.close(promise: nil)
            return
        }
        context.fireUserInboundEventTriggered(event)
    }
}

/// Bounds of the admin listener (fixed): it must never take file descriptors or time from the proxy.
enum AdminLimits {
    /// Open admin connections; past it new ones are closed at accept.
    static let maxConnections = 64
    /// An admin connection that reads nothing for this long is closed (idle, or a request never finished).
    static let idleTimeout = TimeAmount.seconds(10)
}

/// First handler of an admin connection: closes it at accept past `AdminLimits.maxConnections`.
final class AdminConnectionLimit: ChannelInboundHandler, Sendable {
    typealias InboundIn = NIOAny
    let open: ManagedAtomic<Int>
    let refused: CoreMetrics.Counter

    init(open: ManagedAtomic<Int>, refused: CoreMetrics.Counter) {
        self.open = open
        self.refused = refused
    }

    func channelActive(context: ChannelHandlerContext) {
        if open.wrappingIncrementThenLoad(ordering: .relaxed) > AdminLimits.maxConnections {
            refused.increment()
            context.close(promise: nil)
            return
        }
        context.fireChannelActive()
    }

    func channelInactive(context: ChannelHandlerContext) {
        open.wrappingDecrement(ordering: .relaxed)
        context.fireChannelInactive()
    }
}
