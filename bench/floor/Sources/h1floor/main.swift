// h1floor: an HTTP/1.1 proxy's forwarding core on NIO, with nothing else, to measure what NIO's
// HTTP/1 pipeline costs per request before any of meshd's own work (bench/floor/README.md).
// One event loop; each downstream connection gets its own upstream keep-alive connection (the
// cheapest pool there is), opened when the client connects.
//
//   codec  NIO's HTTP/1 codec on both connections, as meshd adds it: the request decoder and the
//          response encoder downstream, the request encoder and the response decoder upstream, each
//          decoder's `ByteToMessageHandler` held by a final handler so that its code is specialised
//          (as in meshd's `Proxy/HTTP1Codec.swift`). The request head gets meshd's smallest rewrite
//          (an `x-forwarded-for` and a fresh `x-request-id`), the response head loses its hop-by-hop
//          `connection` field; parts are written as they come and flushed once per read.
//   bytes  no HTTP at all: each connection's bytes written to the other as they come (NIO's sockets
//          and channel pipeline alone).
//
// usage: h1floor codec|bytes LISTEN_PORT UPSTREAM_IP UPSTREAM_PORT
//
// A measuring harness: no timeouts and no backpressure (the benchmark's client waits for each
// response). A synchronous main: valgrind cannot run a Swift async main.

import FloorSupport
import NIOCore
import NIOHTTP1
import NIOPosix

let (design, listenPort, upstreamAddress) = floorArguments(tool: "h1floor", designs: ["codec", "bytes"])
let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)

/// Opens the upstream connection of a downstream one, `handlers` last in its pipeline; `connected`
/// runs on the loop with the channel, or nil when the connection failed.
func connectUpstream(
    on loop: EventLoop, handlers: @escaping @Sendable (Channel) throws -> Void,
    connected: @escaping (Channel?) -> Void
) {
    ClientBootstrap(group: loop)
        .channelOption(.tcpOption(.tcp_nodelay), value: 1)
        .channelInitializer { channel in channel.eventLoop.makeCompletedFuture { try handlers(channel) } }
        .connect(to: upstreamAddress)
        .assumeIsolated()
        .whenComplete { result in connected(try? result.get()) }
}

// MARK: - codec: NIO's HTTP/1 codec both ways

// The two decoder holders are meshd's `HTTPRequestDecoderHandler` and `HTTPResponseDecoderHandler`
// (Sources/MeshProxy/Proxy/HTTP1Codec.swift) reduced to the events this harness sees.

final class RequestDecoder: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = HTTPServerRequestPart

    private let inner = ByteToMessageHandler(HTTPRequestDecoder(leftOverBytesStrategy: .dropBytes))

    func handlerAdded(context: ChannelHandlerContext) { inner.handlerAdded(context: context) }
    func handlerRemoved(context: ChannelHandlerContext) { inner.handlerRemoved(context: context) }
    func channelRead(context: ChannelHandlerContext, data: NIOAny) { inner.channelRead(context: context, data: data) }
    func channelInactive(context: ChannelHandlerContext) { inner.channelInactive(context: context) }
}

final class ResponseDecoder: ChannelDuplexHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = HTTPClientResponsePart
    typealias OutboundIn = HTTPClientRequestPart
    typealias OutboundOut = HTTPClientRequestPart

    private let inner = ByteToMessageHandler(HTTPResponseDecoder(leftOverBytesStrategy: .dropBytes))

    func handlerAdded(context: ChannelHandlerContext) { inner.handlerAdded(context: context) }
    func handlerRemoved(context: ChannelHandlerContext) { inner.handlerRemoved(context: context) }
    func channelRead(context: ChannelHandlerContext, data: NIOAny) { inner.channelRead(context: context, data: data) }
    func channelInactive(context: ChannelHandlerContext) { inner.channelInactive(context: context) }
    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        inner.write(context: context, data: data, promise: promise)
    }
}

/// The client's connection: requests in, rewritten and written upstream; responses out.
final class HTTPDownstream: ChannelInboundHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    var context: ChannelHandlerContext?
    var upstream: HTTPUpstream?
    /// Request parts read before the upstream connection was up.
    var pending: [HTTPClientRequestPart] = []
    var clientIP = "unknown"
    var ids = RequestIDs()

    func channelActive(context: ChannelHandlerContext) {
        self.context = context
        clientIP = context.channel.remoteAddress?.ipAddress ?? "unknown"
        let handler = NIOLoopBound(HTTPUpstream(downstream: self), eventLoop: context.eventLoop)
        connectUpstream(on: context.eventLoop) { channel in
            try channel.pipeline.syncOperations.addHandlers(HTTPRequestEncoder(), ResponseDecoder(), handler.value)
        } connected: { channel in
            guard channel != nil, self.context != nil else {
                self.context?.close(promise: nil)
                return
            }
            self.upstream = handler.value
            for part in self.pending { handler.value.write(part) }
            self.pending.removeAll()
            handler.value.context?.flush()
        }
        context.fireChannelActive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let part: HTTPClientRequestPart
        switch unwrapInboundIn(data) {
        case .head(var head):
            head.headers.add(name: "x-forwarded-for", value: clientIP)
            head.headers.add(name: "x-request-id", value: ids.next())
            part = .head(head)
        case .body(let buffer): part = .body(.byteBuffer(buffer))
        case .end(let trailers): part = .end(trailers)
        }
        if let upstream { upstream.write(part) } else { pending.append(part) }
    }

    func channelReadComplete(context: ChannelHandlerContext) { upstream?.context?.flush() }

    func channelInactive(context: ChannelHandlerContext) {
        self.context = nil
        upstream?.context?.close(promise: nil)
    }

    func write(_ part: HTTPServerResponsePart) { context?.write(wrapOutboundOut(part), promise: nil) }
}

/// The upstream connection of one downstream: responses in, passed back; requests out.
final class HTTPUpstream: ChannelInboundHandler {
    typealias InboundIn = HTTPClientResponsePart
    typealias OutboundOut = HTTPClientRequestPart

    var context: ChannelHandlerContext?
    weak var downstream: HTTPDownstream?

    init(downstream: HTTPDownstream) { self.downstream = downstream }

    func handlerAdded(context: ChannelHandlerContext) { self.context = context }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard let downstream else { return }
        switch unwrapInboundIn(data) {
        case .head(var head):
            head.headers.remove(name: "connection")
            downstream.write(.head(head))
        case .body(let buffer): downstream.write(.body(.byteBuffer(buffer)))
        case .end(let trailers): downstream.write(.end(trailers))
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) { downstream?.context?.flush() }

    func channelInactive(context: ChannelHandlerContext) {
        self.context = nil
        downstream?.context?.close(promise: nil)
    }

    func write(_ part: HTTPClientRequestPart) { context?.write(wrapOutboundOut(part), promise: nil) }
}

// MARK: - bytes: a byte pipe

/// One end of a byte pipe: what it reads goes to its peer, flushed once per read.
final class Pipe: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    var context: ChannelHandlerContext?
    var peer: Pipe?
    /// Bytes read before the peer's connection was up.
    var pending: [ByteBuffer] = []

    func handlerAdded(context: ChannelHandlerContext) { self.context = context }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let buffer = unwrapInboundIn(data)
        if let peer { peer.context?.write(wrapOutboundOut(buffer), promise: nil) } else { pending.append(buffer) }
    }

    func channelReadComplete(context: ChannelHandlerContext) { peer?.context?.flush() }

    func channelInactive(context: ChannelHandlerContext) {
        self.context = nil
        peer?.context?.close(promise: nil)
        peer?.peer = nil
        peer = nil
    }
}

/// The client's end of a pipe: opens the upstream end when the client connects.
final class PipeDownstream: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer

    let pipe = Pipe()

    func channelActive(context: ChannelHandlerContext) {
        let upstream = NIOLoopBound(Pipe(), eventLoop: context.eventLoop)
        connectUpstream(on: context.eventLoop) { channel in
            try channel.pipeline.syncOperations.addHandler(upstream.value)
        } connected: { channel in
            guard channel != nil, self.pipe.context != nil else {
                self.pipe.context?.close(promise: nil)
                return
            }
            upstream.value.peer = self.pipe
            self.pipe.peer = upstream.value
            for buffer in self.pipe.pending { upstream.value.context?.write(NIOAny(buffer), promise: nil) }
            self.pipe.pending.removeAll()
            upstream.value.context?.flush()
        }
        context.fireChannelActive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) { context.fireChannelRead(data) }
}

let server = try ServerBootstrap(group: group)
    .serverChannelOption(.backlog, value: 256)
    .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
    .childChannelOption(.tcpOption(.tcp_nodelay), value: 1)
    .childChannelInitializer { channel in
        channel.eventLoop.makeCompletedFuture {
            let sync = channel.pipeline.syncOperations
            if design == "codec" {
                try sync.addHandlers(HTTPResponseEncoder(), RequestDecoder(), HTTPDownstream())
            } else {
                let downstream = PipeDownstream()
                try sync.addHandlers(downstream, downstream.pipe)
            }
        }
    }
    .bind(host: "127.0.0.1", port: listenPort).wait()

print("h1floor \(design) listening on 127.0.0.1:\(listenPort), upstream \(upstreamAddress)")
try server.closeFuture.wait()
