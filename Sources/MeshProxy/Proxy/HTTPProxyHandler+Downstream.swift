import NIOCore
import NIOHTTP1

// The client's side, for an HTTP/1.1 connection (this handler's channel) or an HTTP/2 stream (its
// connection's `HTTP2DownstreamConnection`, which turns the response into frames): every write,
// flush, read and close toward the client goes through here.
extension HTTPProxyHandler {
    /// One response part to the client; `thenClose`: the connection closes once it is written.
    func emit(_ part: HTTPServerResponsePart, flush: Bool = false, context: ChannelHandlerContext, thenClose: Bool = false) {
        if let frames {
            frames.respond(part, on: self)
            if flush { frames.flush(self) }
            if thenClose { frames.close(self) }
            return
        }
        guard thenClose else {
            if flush {
                context.writeAndFlush(wrapOutboundOut(part), promise: nil)
            } else {
                context.write(wrapOutboundOut(part), promise: nil)
            }
            return
        }
        context.writeAndFlush(wrapOutboundOut(part)).assumeIsolated().whenComplete { _ in context.close(promise: nil) }
    }

    func flushDownstream(_ context: ChannelHandlerContext) {
        if let frames { return frames.flush(self) }
        context.flush()
    }

    /// Closes the connection, or resets the stream (RST_STREAM CANCEL) unless it is over at both ends.
    func closeDownstream(_ context: ChannelHandlerContext) {
        if let frames { return frames.close(self) }
        context.close(promise: nil)
    }

    /// Reads more of the request: the connection's next read, or the stream's flow-control credit.
    func readDownstream(_ context: ChannelHandlerContext) {
        if let frames { return frames.credit(self) }
        context.read()
    }

    var downstreamWritable: Bool {
        if let frames { return frames.isWritable(self) }
        return context?.channel.isWritable ?? false
    }

    // MARK: - An HTTP/2 stream's events (from `HTTP2DownstreamConnection`)

    /// The stream opened (its HEADERS arrived); `context` is its connection's.
    func streamOpened(context: ChannelHandlerContext) {
        self.context = context
        loop.register(self)
        connectionGuard.streamOpened()
        // Every stream of a connection has the same client: its address is formatted once.
        if let ip = connectionGuard.clientIP {
            clientIP = ip
        } else if let ip = context.channel.remoteAddress?.ipAddress {
            clientIP = ip
            connectionGuard.clientIP = ip
        }
    }

    /// Request bytes may flow (the stream is credited as they are delivered) unless they would wait.
    var wantsRequestBytes: Bool {
        switch state {
        case .connecting, .backoff: return false
        case .proxying(let upstream): return upstream.isWritable
        default: return true
        }
    }

    func streamReadComplete() {
        if upstreamNeedsFlush, case .proxying(let upstream) = state {
            upstreamNeedsFlush = false
            upstream.flush()
        }
    }

    func streamWritable() {
        if case .proxying(let upstream) = state { upstream.resumeReading() }
    }

    /// The stream is closed (both ends done, reset by either side, or its connection closed).
    func streamClosed() {
        downstreamClosed()
        connectionGuard.streamClosed()
        context = nil
    }
}
