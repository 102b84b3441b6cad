import Logging
import MeshCore
import NIOCore

/// Reads a connection's first bytes (at most 1 KiB, within `http.detectTimeout`), decides what it
/// speaks (MeshCore's `ProtocolDetection`), lets `configure` set up the pipeline after it, then
/// removes itself and passes the bytes it held on. A client that sends nothing is closed after the
/// timeout; one that sends too little to tell, likewise.
final class ProtocolDetector: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer

    typealias Configure = (DetectedProtocol, ChannelHandlerContext) throws -> Bool

    private var buffered: ByteBuffer?
    private let timeout: TimeAmount
    private let configure: Configure
    private let onTimeout: () -> Void
    private var timer: Scheduled<Void>?
    private var decided = false

    /// `configure` returns false to refuse the connection (it is then closed).
    init(timeout: TimeAmount, onTimeout: @escaping () -> Void, configure: @escaping Configure) {
        self.timeout = timeout
        self.onTimeout = onTimeout
        self.configure = configure
    }

    func handlerAdded(context: ChannelHandlerContext) {
        if context.channel.isActive { startTimer(context) }
    }

    func channelActive(context: ChannelHandlerContext) {
        startTimer(context)
        context.fireChannelActive()
    }

    private func startTimer(_ context: ChannelHandlerContext) {
        guard timer == nil else { return }
        timer = context.eventLoop.assumeIsolated().scheduleTask(in: timeout) { [self] in
            guard !self.decided else { return }
            self.decided = true
            self.onTimeout()
            context.close(promise: nil)
        }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        timer?.cancel()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var incoming = unwrapInboundIn(data)
        guard !decided else {
            context.fireChannelRead(data)
            return
        }
        if buffered == nil {
            buffered = incoming
        } else {
            buffered!.writeBuffer(&incoming)
        }
        let view = buffered!.readableBytesView
        guard let proto = ProtocolDetection.classify(view) else { return }
        decide(proto, context: context)
    }

    private func decide(_ proto: DetectedProtocol, context: ChannelHandlerContext) {
        decided = true
        timer?.cancel()
        let accepted: Bool
        do { accepted = try configure(proto, context) } catch { accepted = false }
        guard accepted else {
            context.close(promise: nil)
            return
        }
        if let bytes = buffered {
            buffered = nil
            context.fireChannelRead(wrapInboundOut(bytes))
            context.fireChannelReadComplete()
        }
        context.pipeline.syncOperations.removeHandler(self, promise: nil)
    }

    func channelInactive(context: ChannelHandlerContext) {
        timer?.cancel()
        context.fireChannelInactive()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if !decided, let e = event as? ChannelEvent, case .inputClosed = e {
            // The client finished sending before we could tell: with bytes, decide on what there is
            // (no more will come) and pass the EOF on after them; with none, there is nothing to serve.
            guard let bytes = buffered, bytes.readableBytes > 0 else {
                decided = true
                timer?.cancel()
                context.close(promise: nil)
                return
            }
            decide(ProtocolDetection.classify(bytes.readableBytesView) ?? .opaque, context: context)
        }
        context.fireUserInboundEventTriggered(event)
    }
}
