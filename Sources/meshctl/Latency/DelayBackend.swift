import ArgumentParser
import Foundation
import NIOCore
import NIOHTTP1
import NIOHTTP2
import NIOPosix

/// An HTTP/1.1 server that answers every request `200 ok` after a fixed delay: a backend whose true
/// latency is known, to calibrate `meshctl latency` (its own overhead) and to test it. It runs on one
/// event loop; with `serial`, requests are served one at a time in arrival order over all connections
/// (each takes `delay`), like a backend with a single worker. With `http2` it speaks HTTP/2 with prior
/// knowledge (h2c) instead, every stream answered the same way (`serial` then orders streams).
final class DelayBackend: Sendable {
    let channel: Channel
    /// The group the backend made for itself (nil when it runs on a caller's loop).
    let ownGroup: MultiThreadedEventLoopGroup?

    var port: Int { channel.localAddress?.port ?? 0 }

    private init(channel: Channel, ownGroup: MultiThreadedEventLoopGroup?) {
        self.channel = channel
        self.ownGroup = ownGroup
    }

    /// Starts the backend on its own event loop, or on `loop` (the unit tests share the load generator's).
    static func start(
        host: String = "127.0.0.1", port: Int = 0, delayNanos: UInt64, serial: Bool, http2: Bool = false, on loop: EventLoop? = nil
    ) async throws -> DelayBackend {
        let ownGroup = loop == nil ? MultiThreadedEventLoopGroup(numberOfThreads: 1) : nil
        let loop = loop ?? ownGroup!.next()
        do {
            let state = try await loop.submit { NIOLoopBound(SerialState(), eventLoop: loop) }.get()
            let channel = try await ServerBootstrap(group: loop)
                .serverChannelOption(.backlog, value: 1024)
                .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
                .childChannelOption(.tcpOption(.tcp_nodelay), value: 1)
                .childChannelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        guard http2 else {
                            try channel.pipeline.syncOperations.configureHTTPServerPipeline(withErrorHandling: true)
                            try channel.pipeline.syncOperations.addHandler(
                                DelayHandler(delayNanos: delayNanos, serial: serial ? state.value : nil, http2: false))
                            return
                        }
                        _ = try channel.pipeline.syncOperations.configureHTTP2Pipeline(
                            mode: .server, connectionConfiguration: .init(), streamConfiguration: .init()
                        ) { stream in
                            stream.eventLoop.makeCompletedFuture {
                                try stream.pipeline.syncOperations.addHandler(HTTP2FramePayloadToHTTP1ServerCodec())
                                try stream.pipeline.syncOperations.addHandler(
                                    DelayHandler(delayNanos: delayNanos, serial: serial ? state.value : nil, http2: true))
                            }
                        }
                    }
                }
                .bind(host: host, port: port).get()
            return DelayBackend(channel: channel, ownGroup: ownGroup)
        } catch {
            try? await ownGroup?.shutdownGracefully()
            throw error
        }
    }

    func stop() async {
        try? await channel.close()
        try? await ownGroup?.shutdownGracefully()
    }

    /// Shared by all connections (they all live on the one loop): when the single worker is free again.
    final class SerialState {
        var busyUntil: UInt64 = 0
    }

    final class DelayHandler: ChannelInboundHandler {
        typealias InboundIn = HTTPServerRequestPart
        typealias OutboundOut = HTTPServerResponsePart

        private let delayNanos: UInt64
        private let serial: SerialState?
        /// On an HTTP/2 stream (the stream ends with the response; no `connection` header).
        private let http2: Bool
        private var keepAlive = true

        init(delayNanos: UInt64, serial: SerialState?, http2: Bool) {
            self.delayNanos = delayNanos
            self.serial = serial
            self.http2 = http2
        }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            switch unwrapInboundIn(data) {
            case .head(let head): keepAlive = http2 || head.isKeepAlive
            case .body: break
            case .end:
                let now = monotonicNanos()
                var at = now + delayNanos
                if let serial {
                    at = max(now, serial.busyUntil) + delayNanos
                    serial.busyUntil = at
                }
                let keepAlive = self.keepAlive
                let bound = NIOLoopBound(context, eventLoop: context.eventLoop)
                context.eventLoop.assumeIsolated().scheduleTask(deadline: .uptimeNanoseconds(at)) {
                    let context = bound.value
                    var headers = HTTPHeaders()
                    headers.add(name: "content-length", value: "3")
                    headers.add(name: "content-type", value: "text/plain")
                    if !keepAlive { headers.add(name: "connection", value: "close") }
                    let head = HTTPResponseHead(version: self.http2 ? .http2 : .http1_1, status: .ok, headers: headers)
                    context.write(self.wrapOutboundOut(.head(head)), promise: nil)
                    context.write(self.wrapOutboundOut(.body(.byteBuffer(ByteBuffer(string: "ok\n")))), promise: nil)
                    let done = context.writeAndFlush(self.wrapOutboundOut(.end(nil)))
                    if !keepAlive { done.assumeIsolated().whenComplete { _ in context.close(promise: nil) } }
                }
            }
        }
    }
}

struct DelayBackendCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "delay-backend",
        abstract: "A loopback HTTP/1.1 (or h2c) backend that answers after a fixed delay, to calibrate `meshctl latency`.",
        discussion: "Prints `PORT <n>` once listening; runs until interrupted.")

    @Option(help: "Listen address HOST:PORT (port 0 picks a free port).") var listen: String = "127.0.0.1:0"
    @Option(help: "Delay before every answer.") var delay = DurationArgument(.milliseconds(1))
    @Flag(help: "Serve one request at a time over all connections (each takes --delay), like a single-worker backend.")
    var serial = false
    @Flag(name: .customLong("http2"), help: "Speak HTTP/2 with prior knowledge (h2c) instead of HTTP/1.1.") var http2 = false

    func run() async throws {
        let parts = listen.split(separator: ":")
        guard parts.count >= 2, let port = Int(parts.last!) else { throw ValidationError("--listen must be HOST:PORT") }
        let host = parts.dropLast().joined(separator: ":").trimmingCharacters(in: ["[", "]"])
        let backend = try await DelayBackend.start(
            host: host, port: port, delayNanos: delay.nanoseconds, serial: serial, http2: http2)
        FileHandle.standardOutput.write(Data("PORT \(backend.port)\n".utf8))
        try await backend.channel.closeFuture.get()
    }
}
