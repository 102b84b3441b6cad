import MeshCore
import NIOCore
import NIOHTTP1

// meshd's own replies, written by one writer for HTTP/1.1, HTTP/2 and gRPC (what they say is decided
// by MeshCore's `LocalReply`).
extension HTTPProxyHandler {
    /// meshd answers itself (no route, connect failure, timeout...); the connection stays open when
    /// the request has been read completely, else the rest of its body is read and dropped (up to
    /// `maxDiscardBytes`) first.
    func reply(_ error: MeshError, context: ChannelHandlerContext, detail: String, retryAfter: Int? = nil) {
        switch state {
        case .proxying(let upstream): upstream.close()
        case .backoff(let task): task.cancel()
        default: break
        }
        pending.removeAll()
        // Not waiting for an upstream any more (a stream may close inside the writes below).
        state = .discarding
        loop.shared.metrics.error(error, direction).increment()
        let reply = LocalReply.error(
            error, detail: detail, grpc: req.grpc, http2: multiplexed, close: !req.keepAlive || quiescing, retryAfter: retryAfter)
        if let status = reply.grpcStatus { req.grpcStatus = status }
        req.exchange.replied()
        finishRequest(status: reply.status, error: error)
        if !req.keepAlive && !multiplexed && !req.exchange.requestEnded {
            // The rest of this request cannot be trusted (e.g. a Content-Length past 2^63 - 1): the
            // connection closes once the reply is out, instead of reading what follows.
            state = .closed
            write(reply, context: context, thenClose: true)
            return
        }
        write(reply, context: context)
        if req.exchange.requestEnded {
            goIdleOrClose()
        } else {
            discardRestOfRequest(context: context)
        }
    }

    /// Writes `reply`: head, body and end; or, for a trailers-only gRPC reply on HTTP/2, one HEADERS
    /// frame that ends the stream. `thenClose`: the connection closes once the reply is written.
    func write(_ reply: LocalReply, context: ChannelHandlerContext, thenClose: Bool = false) {
        var headers = HTTPHeaders()
        for field in reply.headers { headers.add(name: field.name, value: field.value) }
        let head = HTTPResponseHead(
            version: .http1_1, status: HTTPResponseStatus(statusCode: reply.status, reasonPhrase: reply.reason), headers: headers)
        if reply.trailersOnly {
            trailersOnlyHead = .http1(head)
            writeResponseEnd(nil, context: context)
            return
        }
        emit(.head(head), context: context)
        if !reply.body.isEmpty {
            emit(.body(.byteBuffer(context.channel.allocator.buffer(string: reply.body))), context: context)
        }
        emit(.end(reply.trailers.map(Self.headers)), flush: true, context: context, thenClose: thenClose)
    }

    static func headers(_ fields: [LocalReply.Field]) -> HTTPHeaders {
        var headers = HTTPHeaders()
        for field in fields { headers.add(name: field.name, value: field.value) }
        return headers
    }

    /// A gRPC call whose response is under way cannot get a new head: it ends with `error`'s status
    /// in its trailers, and the upstream side (if any) is dropped.
    func endGRPCCall(_ error: MeshError, detail: String, context: ChannelHandlerContext) {
        if case .proxying(let upstream) = state {
            upstream.owner = nil
            upstream.close()
        }
        req.grpcStatus = error.grpcStatus
        req.exchange.replied()
        finishRequest(status: req.status, error: error)
        emit(.end(Self.headers(LocalReply.grpcTrailers(error, detail: detail))), flush: true, context: context)
        if req.exchange.requestEnded {
            state = .closed
        } else {
            discardRestOfRequest(context: context)
        }
    }

    /// A request that cannot be parsed: reply if no response is under way, then close.
    func protocolFailure(_ error: MeshError, context: ChannelHandlerContext) {
        if case .closed = state { return }  // already answered and closing: not a second error
        loop.shared.metrics.error(error, direction).increment()
        switch state {
        case .idle:
            req = RequestState()
            req.started = .now()
            req.keepAlive = false
            req.exchange.replied()
            let detail = error == .headersTooLarge ? "request head larger than http.maxHeaderBytes" : "malformed HTTP request"
            state = .closed
            write(LocalReply.error(error, detail: detail, grpc: false, http2: false, close: true), context: context, thenClose: true)
            return
        case .proxying(let upstream):
            upstream.close()
        case .backoff(let task):
            task.cancel()
        case .connecting, .discarding:
            break
        case .closed:
            return
        }
        let responded = req.exchange.cancel()
        finishRequest(status: responded ? req.status : error.status, error: error)
        state = .closed
        if !responded && !multiplexed {
            // The body broke (a bad chunk size, an unknown transfer coding) before any response: the
            // client is told why, then the connection closes (its framing can no longer be trusted).
            write(
                LocalReply.error(error, detail: "malformed HTTP request body", grpc: false, http2: false, close: true),
                context: context, thenClose: true)
            return
        }
        closeDownstream(context)
    }

    /// The response's end, after its head — or, for a held trailers-only gRPC head, both: the stream
    /// sends them as one HEADERS frame with END_STREAM.
    func writeResponseEnd(_ trailers: HTTPHeaders?, context: ChannelHandlerContext) {
        guard let held = trailersOnlyHead else {
            emit(.end(trailers), flush: true, context: context)
            return
        }
        trailersOnlyHead = nil
        if case .http1(var head) = held {
            // (A head that ends the stream says nothing of a body.)
            if trailers == nil { head.headers.remove(name: "content-length") }
            emit(.head(head), context: context)
        } else {
            emitHead(held, context: context)
        }
        emit(.end(trailers), flush: true, context: context)
    }

}
