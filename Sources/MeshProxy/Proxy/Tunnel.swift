import NIOCore
import NIOHTTP1

// The upgrade path (WebSocket and any `Upgrade:` protocol): after the upstream's 101 both connections
// leave HTTP and become a byte pipe.
extension HTTPProxyHandler {
    /// `101 Switching Protocols`: forward it, then both connections leave HTTP and become a byte pipe
    /// (GlueHandler pair); bytes either decoder already read are passed on, not dropped.
    func switchToTunnel(
        _ head: HTTPResponseHead, upgrade: String, upstream: UpstreamConnection, context: ChannelHandlerContext
    ) {
        var head = head
        head.headers.meshStripHopByHop(removeExpect: false)
        head.headers.replaceOrAdd(name: "upgrade", value: head.headers.first(name: "upgrade") ?? upgrade)
        head.headers.replaceOrAdd(name: "connection", value: "upgrade")
        head.version = .http1_1
        req.status = 101
        context.write(wrapOutboundOut(.head(head)), promise: nil)
        context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
        finishRequest(status: 101, error: nil)
        loop.shared.metrics.upgrades.increment()
        let (down, up) = GlueHandler.matchedPair()
        down.loop = loop
        down.idleTimeout = req.service?.idleTimeout ?? loop.snapshot.config.upstream.idleTimeout
        state = .closed
        do {
            let sync = context.pipeline.syncOperations
            _ = context.channel.setOption(.allowRemoteHalfClosure, value: true)
            try sync.addHandler(down)
            try upstream.becomeTunnel(up)
            sync.removeHandler(context: context, promise: nil)
            if let encoder = try? sync.context(handlerType: HTTPResponseEncoder.self) {
                sync.removeHandler(context: encoder, promise: nil)
            }
            if let decoder = try? sync.context(handlerType: HTTPRequestDecoderHandler.self) {
                sync.removeHandler(context: decoder, promise: nil)
            }
            // Bytes either decoder held reach the glue when its removal completes (after this read
            // cycle), without a read-complete: flush both sides on the next loop turn.
            let downstream = context.channel
            context.eventLoop.assumeIsolated().execute {
                downstream.flush()
                upstream.channelFlush()
            }
            context.channel.read()
            upstream.channelRead()
        } catch {
            loop.shared.logger.warning("upgrade switch failed", metadata: ["error": "\(error)"])
            upstream.close()
            context.close(promise: nil)
        }
    }
}
