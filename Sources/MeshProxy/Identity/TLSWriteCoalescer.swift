import NIOCore

/// Sits just after NIOSSL's handler on every TLS connection (inbound and outbound) and joins the small
/// writes of one flush into one buffer before they reach it. NIOSSL seals each write as its own TLS
/// record, so a response written as head, body and end costs two or three records — each a seal here,
/// an open at the peer, and NIOSSL's per-write bookkeeping on both sides — where one would do. Writes
/// are joined while the total stays within one record's plaintext (16 KiB); a larger write passes
/// through as it came (copying it would cost more than a record saves).
///
/// Bound: at most `maxJoined` bytes held, and only until the next flush (or close).
final class TLSWriteCoalescer: ChannelOutboundHandler, RemovableChannelHandler {
    typealias OutboundIn = IOData
    typealias OutboundOut = IOData

    /// One TLS record's plaintext (RFC 8446 §5.1).
    static let maxJoined = 16 * 1024

    /// The write held until the flush: the first buffer as it came, or (`joined`) this handler's own
    /// buffer holding several.
    private var pending: ByteBuffer?
    private var joined = false
    private var promise: EventLoopPromise<Void>?

    init() {}

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        guard case .byteBuffer(let buffer) = unwrapOutboundIn(data) else {
            forwardPending(context: context)
            context.write(data, promise: promise)
            return
        }
        if var held = pending {
            if held.readableBytes + buffer.readableBytes <= Self.maxJoined {
                pending = nil  // (one reference: the append below writes in place)
                // The first buffer is usually one an encoder just allocated for this write (a
                // response head) with room to spare: the next ones are appended to it in place. A
                // slice of a larger read (no room past it) is copied into a buffer of its own.
                if !joined && held.writableBytes < buffer.readableBytes {
                    let size = held.readableBytes + buffer.readableBytes
                    var own = context.channel.allocator.buffer(capacity: min(Self.maxJoined, max(512, 2 * size)))
                    own.writeImmutableBuffer(held)
                    held = own
                }
                joined = true
                held.writeImmutableBuffer(buffer)
                pending = held
                chain(promise)
                return
            }
            forwardPending(context: context)
        }
        if buffer.readableBytes >= Self.maxJoined {
            context.write(data, promise: promise)
            return
        }
        pending = buffer
        joined = false
        self.promise = promise
    }

    func flush(context: ChannelHandlerContext) {
        forwardPending(context: context)
        context.flush()
    }

    func close(context: ChannelHandlerContext, mode: CloseMode, promise: EventLoopPromise<Void>?) {
        // As without this handler: what was written before the close reaches NIOSSL first.
        forwardPending(context: context)
        context.close(mode: mode, promise: promise)
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        forwardPending(context: context)
    }

    private func chain(_ next: EventLoopPromise<Void>?) {
        guard let next else { return }
        if let first = promise {
            first.futureResult.cascade(to: next)
        } else {
            promise = next
        }
    }

    private func forwardPending(context: ChannelHandlerContext) {
        guard let held = pending else { return }
        pending = nil
        let p = promise
        promise = nil
        context.write(wrapOutboundOut(.byteBuffer(held)), promise: p)
    }
}
