import NIOCore
import NIOHTTP1

// NIO's HTTP/1 decoders (llhttp) in their `ByteToMessageHandler`, held by a concrete final handler.
//
// Added directly, `ByteToMessageHandler<HTTPRequestDecoder>` runs its generic code unspecialised: the
// pipeline calls it through an existential, so every read and every write it sees looks up
// `Optional<Decoder>`'s metadata and casts its `NIOAny` through the runtime (about 5 k instructions
// of metadata lookups per proxied request, callgrind). Called here on its concrete type (a final
// class: static dispatch), the compiler specialises that code in meshd's module when the
// dependencies' bodies are visible to it (the release build's cross-module optimisation,
// `scripts/build-release.sh`). Behaviour is the wrapped handler's: every event it handles is passed
// to it with this handler's context, the others pass by as they would past it.
//
// Two classes with the same forwarding, not one generic over the decoder: the pipeline would call a
// generic handler through an existential too, and its code would run unspecialised again.

/// The server side: requests in, as NIO's `configureHTTPServerPipeline` adds it.
final class HTTPRequestDecoderHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = HTTPServerRequestPart

    private let inner: ByteToMessageHandler<HTTPRequestDecoder>

    init(_ decoder: HTTPRequestDecoder) { inner = ByteToMessageHandler(decoder) }

    func handlerAdded(context: ChannelHandlerContext) { inner.handlerAdded(context: context) }
    func handlerRemoved(context: ChannelHandlerContext) { inner.handlerRemoved(context: context) }
    func channelRead(context: ChannelHandlerContext, data: NIOAny) { inner.channelRead(context: context, data: data) }
    func channelInactive(context: ChannelHandlerContext) { inner.channelInactive(context: context) }
    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        inner.userInboundEventTriggered(context: context, event: event)
    }
    func removeHandler(context: ChannelHandlerContext, removalToken: ChannelHandlerContext.RemovalToken) {
        inner.removeHandler(context: context, removalToken: removalToken)
    }
}

/// The client side (an upstream HTTP/1.1 connection): responses in, requests observed (a response to
/// `HEAD` has no body), as NIO's `addHTTPClientHandlers` adds it.
final class HTTPResponseDecoderHandler: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = HTTPClientResponsePart
    typealias OutboundIn = HTTPClientRequestPart
    typealias OutboundOut = HTTPClientRequestPart

    private let inner: ByteToMessageHandler<HTTPResponseDecoder>

    init(_ decoder: HTTPResponseDecoder) { inner = ByteToMessageHandler(decoder) }

    func handlerAdded(context: ChannelHandlerContext) { inner.handlerAdded(context: context) }
    func handlerRemoved(context: ChannelHandlerContext) { inner.handlerRemoved(context: context) }
    func channelRead(context: ChannelHandlerContext, data: NIOAny) { inner.channelRead(context: context, data: data) }
    func channelInactive(context: ChannelHandlerContext) { inner.channelInactive(context: context) }
    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        inner.userInboundEventTriggered(context: context, event: event)
    }
    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        inner.write(context: context, data: data, promise: promise)
    }
    func removeHandler(context: ChannelHandlerContext, removalToken: ChannelHandlerContext.RemovalToken) {
        inner.removeHandler(context: context, removalToken: removalToken)
    }
}
