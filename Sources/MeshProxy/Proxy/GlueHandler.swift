import MeshCore
import NIOCore

/// The byte pump between two channels of the same event loop (the shape of swift-nio-examples'
/// connect-proxy GlueHandler): bytes read on one side are written to the other, reads are held while
/// the partner cannot take more, writes are flushed on read-complete, and a half-close (EOF) is passed
/// through as a half-close. Used for opaque TCP and for connections upgraded out of HTTP.
final class GlueHandler: ChannelDuplexHandler, LoopTimed {
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private var partner: GlueHandler?
    private var context: ChannelHandlerContext?
    private var pendingRead = false
    /// Bytes read on this side (and so written to the partner).
    var bytesRead: UInt64 = 0
    /// Called once when this side closes, with the bytes read on it.
    var onClose: ((UInt64) -> Void)?
    /// Bounds the time with no byte in either direction (checked on the loop's tick when `loop` is set).
    var lastActivity = NIODeadline.now()
    var idleTimeout: MeshDuration?
    weak var loop: LoopContext? {
        didSet { loop?.register(self) }
    }

    func checkTimeouts(now: NIODeadline) {
        guard let idleTimeout, let context, now - lastActivity > .nanoseconds(idleTimeout.nanoseconds) else { return }
        loop?.shared.logger.info("closing idle opaque TCP connection", metadata: ["timeout": "\(idleTimeout)"])
        context.close(promise: nil)
        partner?.partnerCloseFull()
    }

    static func matchedPair() -> (GlueHandler, GlueHandler) {
        let a = GlueHandler()
        let b = GlueHandler()
        a.partner = b
        b.partner = a
        return (a, b)
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
        self.partner = nil
    }

    private func partnerWrite(_ data: NIOAny) { context?.write(data, promise: nil) }
    private func partnerFlush() { context?.flush() }
    /// Passes on an EOF (or a full close) only after everything already written to this side is
    /// out: NIO escalates an output half-close to a full close when the input is already shut down,
    /// and a full close drops pending writes. Writes complete in order, so an empty write's promise
    /// completes once all earlier ones are on the wire.
    private func partnerWriteEOF() { closeAfterPendingWrites(mode: .output) }
    private func partnerCloseFull() { closeAfterPendingWrites(mode: .all) }

    private func closeAfterPendingWrites(mode: CloseMode) {
        guard let context else { return }
        let flushed = context.eventLoop.makePromise(of: Void.self)
        context.writeAndFlush(wrapOutboundOut(context.channel.allocator.buffer(capacity: 0)), promise: flushed)
        flushed.futureResult.assumeIsolated().whenComplete { _ in
            context.close(mode: mode, promise: nil)
        }
    }
    private var partnerWritable: Bool { context?.channel.isWritable ?? false }

    private func partnerBecameWritable() {
        if pendingRead {
            pendingRead = false
            context?.read()
        }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        bytesRead &+= UInt64(unwrapInboundIn(data).readableBytes)
        lastActivity = .now()
        partner?.lastActivity = lastActivity
        partner?.partnerWrite(data)
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        partner?.partnerFlush()
    }

    func channelInactive(context: ChannelHandlerContext) {
        loop?.unregister(self)
        onClose?(bytesRead)
        onClose = nil
        partner?.partnerCloseFull()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let event = event as? ChannelEvent, case .inputClosed = event {
            // The peer finished sending: finish sending to the other peer, keep reading its answer.
            partner?.partnerWriteEOF()
        }
        context.fireUserInboundEventTriggered(event)
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        context.close(promise: nil)
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable { partner?.partnerBecameWritable() }
    }

    func read(context: ChannelHandlerContext) {
        if let partner, partner.partnerWritable {
            context.read()
        } else {
            pendingRead = true
        }
    }
}
