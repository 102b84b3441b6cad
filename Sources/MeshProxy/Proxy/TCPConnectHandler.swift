import CoreMetrics
import Logging
import MeshCore
import NIOCore
import NIOPosix

/// Opaque TCP: where a connection's bytes go. Created and used on one event loop only (it holds the
/// loop's `LoopEndpoint`); `@unchecked Sendable` only to travel in that loop's futures.
struct TCPTarget: @unchecked Sendable {
    var address: SocketAddress
    /// Metric label: the service name, or `app` / `original-dst`.
    var label: String
    var connectTimeout: MeshDuration
    /// The balancer's endpoint (in-flight accounting), for service targets.
    var endpoint: LoopEndpoint?
}

/// Connects the downstream connection to its target on the same event loop, holding reads (and the
/// few bytes protocol detection already read) until the upstream is there, then hands both channels
/// to a `GlueHandler` pair and removes itself.
final class TCPConnectHandler: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = ByteBuffer

    typealias Resolve = (Channel) -> EventLoopFuture<TCPTarget?>

    private let resolve: Resolve
    private let loop: LoopContext
    private let direction: Direction
    private let idleTimeout: MeshDuration
    private var buffered: [ByteBuffer] = []
    private var bufferedBytes = 0
    private var started = false
    private var readPending = false
    /// The client half-closed before the upstream was there: pass its EOF on after the bytes.
    private var inputClosed = false
    static let maxBuffered = 64 * 1024

    init(loop: LoopContext, direction: Direction, idleTimeout: MeshDuration, resolve: @escaping Resolve) {
        self.loop = loop
        self.direction = direction
        self.idleTimeout = idleTimeout
        self.resolve = resolve
    }

    func handlerAdded(context: ChannelHandlerContext) {
        if context.channel.isActive { start(context) }
    }

    func channelActive(context: ChannelHandlerContext) {
        start(context)
        context.fireChannelActive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let b = unwrapInboundIn(data)
        bufferedBytes += b.readableBytes
        if bufferedBytes > Self.maxBuffered {
            context.close(promise: nil)
            return
        }
        buffered.append(b)
    }

    func read(context: ChannelHandlerContext) {
        readPending = true  // held until connected
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let e = event as? ChannelEvent, case .inputClosed = e {
            inputClosed = true
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    private func start(_ context: ChannelHandlerContext) {
        guard !started else { return }
        started = true
        let channel = context.channel
        resolve(channel).assumeIsolated().whenComplete { [self] result in
            guard case .success(let target?) = result else {
                self.loop.shared.logger.info(
                    "opaque TCP connection refused: no destination",
                    metadata: ["direction": "\(self.direction.label)", "client": "\(channel.remoteAddress?.description ?? "?")"])
                self.loop.shared.metrics.tcp(self.direction, "none").refused.increment()
                context.close(promise: nil)
                return
            }
            self.connect(target, context: context)
        }
    }

    private func connect(_ target: TCPTarget, context: ChannelHandlerContext) {
        let metrics = loop.shared.metrics.tcp(direction, target.label)
        target.endpoint?.started()
        let started = NIODeadline.now()
        let (downGlue, upGlue) = GlueHandler.matchedPair()
        let boundUpGlue = NIOLoopBound(upGlue, eventLoop: context.eventLoop)
        ClientBootstrap(group: context.eventLoop)
            .connectTimeout(.nanoseconds(target.connectTimeout.nanoseconds))
            .channelOption(.tcpOption(.tcp_nodelay), value: 1)
            .channelOption(.allowRemoteHalfClosure, value: true)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(boundUpGlue.value)
                }
            }
            .connect(to: target.address)
            .assumeIsolated()
            .whenComplete { [self] result in
                switch result {
                case .failure(let error):
                    target.endpoint?.finished(latencyNanos: nil, now: Int64(NIODeadline.now().uptimeNanoseconds))
                    metrics.connectFailures.increment()
                    self.loop.shared.logger.info(
                        "opaque TCP connect failed", metadata: ["target": "\(target.address)", "error": "\(error)"])
                    context.close(promise: nil)
                case .success(let upstream):
                    guard context.channel.isActive else {
                        upstream.close(promise: nil)
                        return
                    }
                    metrics.connections.increment()
                    let endpoint = target.endpoint
                    upGlue.onClose = { bytes in metrics.bytesFromUpstream.increment(by: Int64(bytes)) }
                    downGlue.onClose = { bytes in
                        metrics.bytesFromClient.increment(by: Int64(bytes))
                        endpoint?.finished(
                            latencyNanos: Int64((NIODeadline.now() - started).nanoseconds),
                            now: Int64(NIODeadline.now().uptimeNanoseconds))
                    }
                    downGlue.idleTimeout = self.idleTimeout
                    downGlue.loop = self.loop
                    do {
                        _ = context.channel.setOption(.allowRemoteHalfClosure, value: true)
                        try context.pipeline.syncOperations.addHandler(downGlue, position: .after(self))
                        for b in self.buffered { upstream.write(b, promise: nil) }
                        downGlue.bytesRead = UInt64(self.bufferedBytes)
                        upstream.flush()
                        if self.inputClosed { upstream.close(mode: .output, promise: nil) }
                        self.buffered.removeAll()
                        context.pipeline.syncOperations.removeHandler(self, promise: nil)
                        // From the channel, through the glue (a removed handler's context cannot read).
                        context.channel.read()
                    } catch {
                        upstream.close(promise: nil)
                        context.close(promise: nil)
                    }
                }
            }
    }
}
