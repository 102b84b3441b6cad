import MeshCore
import NIOCore
import NIOHPACK
import NIOHTTP1

// The response side: upstream parts reach the client as the exchange state machine decides (forward,
// hold a gRPC response until its trailers, retry, hand over to the hedge).
extension HTTPProxyHandler {

    func upstreamRead(_ part: HTTPClientResponsePart, from conn: UpstreamConnection) {
        if case .head(let head) = part { return upstreamHead(.http1(head), from: conn) }
        guard let context, conn !== hedge, case .proxying(let primary) = state, primary === conn else { return }
        let now = Self.nowNanos
        switch part {
        case .head: return
        case .body(let buffer):
            req.bytesOut &+= buffer.readableBytes
            if let head = trailersOnlyHead {
                trailersOnlyHead = nil
                emitHead(head, context: context)
            }
            if req.heldHead != nil {
                req.heldBody.append(buffer)
                if req.exchange.heldBody(bytes: buffer.readableBytes, now: now) {
                    // Too large to hold: stream it; this attempt can no longer be retried.
                    releaseHeldResponse(context: context)
                }
                return
            }
            req.exchange.responseBody(now: now)
            emit(.body(.byteBuffer(Self.compacted(buffer, writable: downstreamWritable))), context: context)
        case .end(let trailers):
            if req.heldHead != nil {
                let grpcStatus = trailers?.first(name: "grpc-status").flatMap { Int($0) }
                var admission = retryAdmission
                let action = req.exchange.heldEnd(grpcStatus: grpcStatus, now: now, admission: &admission, rng: &loop.rng)
                if let endpoint = req.endpoint {
                    req.service?.record(endpoint, .response(status: 200, grpcStatus: grpcStatus), now: now)
                }
                switch action {
                case .retry(let retry):
                    // The exchange completed cleanly: the connection goes back to the pool.
                    req.heldHead = nil
                    req.heldBody.removeAll()
                    primary.owner = nil
                    Self.release(primary)
                    state = .connecting
                    scheduleRetry(retry, context: context)
                    return
                case .release(let skipped):
                    countSkipped(skipped)
                    releaseHeldResponse(context: context)
                }
            }
            if let head = req.switchingHead, let upgrade = req.upgrade {
                req.switchingHead = nil
                switchToTunnel(head, upgrade: upgrade, upstream: primary, context: context)
                return
            }
            if req.grpc, let g = GRPC.status(trailers?.first(name: "grpc-status")) { req.grpcStatus = g }
            if req.exchange.responseEnd(now: now) {
                // Done both ways: the upstream goes back first (ending an HTTP/2 stream may close
                // its channel right inside the write below).
                releaseUpstream(primary)
                writeResponseEnd(trailers, context: context)
                goIdleOrClose()
                return
            }
            writeResponseEnd(trailers, context: context)
            // An early response (e.g. 413): the upstream will not read the rest; drop it.
            primary.close()
            finishRequest(status: req.status, error: nil)
            discardRestOfRequest(context: context)
        }
    }

    /// A response head from the current attempt (or the hedge): an HTTP/1 head, or an HTTP/2
    /// upstream's checked block, which an HTTP/2 client gets as it came.
    func upstreamHead(_ head: ResponseHead, from conn: UpstreamConnection) {
        guard let context else { return }
        if conn === hedge {
            hedgeHead(head, conn: conn, context: context)
            return
        }
        guard case .proxying(let primary) = state, primary === conn else { return }
        let now = Self.nowNanos
        guard case .waiting = req.exchange.phase else { return }
        req.responseHeadNanos = now
        // After an upgrade request that it did not switch, a peer may keep reading HTTP/1.1 (RFC
        // 9110 §7.8) or not (a server on NIO's decoder stops parsing at the upgrade): this
        // connection carries nothing more either way (a 101 makes it a tunnel, never pooled).
        if req.upgrade != nil { conn.reusable = false }
        let status = head.status
        let fields = head.scan
        let grpcStatus = fields.grpcStatus.flatMap { Int($0) }
        let isGRPC = fields.contentType.map { GRPC.isGRPC(contentType: $0) } == true
        var admission = retryAdmission
        let action = req.exchange.responseHead(
            status: status, grpcStatus: grpcStatus, grpcContentType: isGRPC, now: now, admission: &admission, rng: &loop.rng)
        if action != .hold, direction == .outbound, let endpoint = req.endpoint {
            req.service?.record(endpoint, .response(status: status, grpcStatus: grpcStatus), now: now)
        }
        switch action {
        case .hold:
            // gRPC puts its status in the trailers: this response waits for them.
            dropHedge()
            req.heldHead = head
            req.heldBody.removeAll()
            return
        case .promoteHedge:
            promoteHedge()
            return
        case .retry(let retry):
            // Not forwarded: this attempt's response is dropped with its connection.
            dropHedge()
            primary.owner = nil
            primary.close()
            scheduleRetry(retry, context: context)
            return
        case .forward(let skipped):
            countSkipped(skipped)
        }
        dropHedge()
        if req.grpc, let g = GRPC.status(fields.grpcStatus) { req.grpcStatus = g }
        if status == 101, req.upgrade != nil, case .http1(let switching) = head {
            // Switch once the decoder has delivered this response's end (it comes right after).
            req.switchingHead = switching
            return
        }
        req.status = status
        let out = responseHeadForClient(head)
        if multiplexed && req.grpc && req.grpcStatus != nil {
            // A trailers-only gRPC response: it must reach the client as one HEADERS frame that
            // ends the stream, so it waits for its end (which follows in the same read).
            trailersOnlyHead = out
            return
        }
        emitHead(out, context: context)
    }

    func upstreamReadComplete(from conn: UpstreamConnection) {
        if conn !== hedge, let context { flushDownstream(context) }
    }

    func upstreamWritabilityChanged(writable: Bool, from conn: UpstreamConnection) {
        if conn === hedge { return }
        if writable && readPending, let context {
            readPending = false
            readDownstream(context)
        }
    }

    func upstreamClosed(error: Error?, from conn: UpstreamConnection) {
        if conn === hedge {
            // The hedged attempt broke: the first attempt carries on.
            if let e = hedgeEndpoint { req.service?.record(e, .reset, now: Self.nowNanos) }
            dropHedge()
            return
        }
        guard case .proxying(let upstream) = state, upstream === conn, let context else { return }
        var admission = retryAdmission
        // A stream the endpoint refused (REFUSED_STREAM, or above its GOAWAY's last stream) never
        // reached the application: it goes again at once, whatever the method (`upstreamRefused`).
        var refused = false
        if case .reset(.refusedStream)? = error as? UpstreamHTTP2Error { refused = true }
        let action =
            refused
            ? req.exchange.upstreamRefused(now: Self.nowNanos, admission: &admission, rng: &loop.rng)
            : req.exchange.upstreamClosed(now: Self.nowNanos, admission: &admission, rng: &loop.rng)
        switch action {
        case .none:
            return
        case .breakResponse:
            // The backend died mid-response: the client must see a broken response, never a
            // silently truncated one.
            loop.shared.logger.warning(
                "upstream closed mid-response",
                metadata: ["target": "\(upstream.address)", "error": "\(error.map { "\($0)" } ?? "eof")"])
            loop.shared.metrics.error(.upstreamReset, direction).increment()
            if req.grpc && multiplexed {
                // A gRPC client gets a status, not a reset stream: UNAVAILABLE in the trailers.
                endGRPCCall(.upstreamReset, detail: "upstream \(upstream.address) closed mid-response", context: context)
                return
            }
            finishRequest(status: req.status, error: .upstreamReset)
            state = .closed
            closeDownstream(context)
        case .reopen:
            // A kept-alive connection the peer closed just as it was reused, or a refused stream: once
            // more, on a new connection or stream. Nothing of it is pending (all went with the
            // head): the kept parts go again, or just the end when no body was sent.
            loop.shared.metrics.upstreamStaleRetries.increment()
            state = .connecting
            if req.exchange.bodyForwarded {
                pending = replayParts()
            } else if req.exchange.requestEnded {
                pending.append(.end(nil))
            }
            dispatch(context: context)
        case .promoteHedge, .retry, .fail:
            recordAttempt(.reset)
            let kind: MeshError = error.map { $0 is HTTPParserError } == true ? .upstreamProtocol : .upstreamReset
            let detail = "upstream \(upstream.address) closed before responding: \(error.map { "\($0)" } ?? "eof")"
            carryOut(action, error: kind, detail: detail, context: context)
        }
    }

    /// A body part that will wait in a write buffer (the client is not reading) is copied when it is a
    /// slice of a much larger buffer: waiting, it would keep all of that buffer alive (an HTTP/2 DATA
    /// frame is a slice of the connection's read buffer, shared with other streams' frames). While the
    /// client reads, parts pass through untouched.
    static func compacted(_ buffer: ByteBuffer, writable: Bool) -> ByteBuffer {
        guard !writable, buffer.storageCapacity > 2 * buffer.readableBytes + 1024 else { return buffer }
        var copy = ByteBufferAllocator().buffer(capacity: buffer.readableBytes)
        copy.writeImmutableBuffer(buffer)
        return copy
    }

    /// Sends a held response's head and body on, and streams from here.
    func releaseHeldResponse(context: ChannelHandlerContext) {
        guard let head = req.heldHead else { return }
        req.heldHead = nil
        req.status = head.status
        emitHead(responseHeadForClient(head), context: context)
        for b in req.heldBody { emit(.body(.byteBuffer(b)), context: context) }
        req.heldBody.removeAll()
    }

    /// The upstream's head as the client gets it. An HTTP/1 head: hop-by-hop headers go, HTTP/1.1,
    /// and `connection: close` when this connection ends after it. An HTTP/2 upstream's block: to an
    /// HTTP/2 client as it came (`HTTP2Conversion.clientBlock`), to an HTTP/1.1 client as an HTTP/1
    /// head.
    func responseHeadForClient(_ head: ResponseHead) -> ResponseHead {
        switch head {
        case .http1(let h):
            return .http1(responseHeadForClient(h))
        case .h2(var response):
            if multiplexed {
                response.block = HTTP2Conversion.clientBlock(response)
                response.rewrite = false
                return .h2(response)
            }
            return .http1(responseHeadForClient(HTTP2Conversion.http1Head(response, requestMethod: req.method)))
        }
    }

    /// A response head to the client: an HTTP/2 block to the stream's connection, as it is.
    func emitHead(_ head: ResponseHead, context: ChannelHandlerContext) {
        switch head {
        case .http1(let h): emit(.head(h), context: context)
        case .h2(let response):
            if let frames { return frames.respond(head: response.block, on: self) }
            emit(.head(HTTP2Conversion.http1Head(response, requestMethod: req.method)), context: context)
        }
    }

    /// The upstream's head as the client gets it: hop-by-hop headers go, HTTP/1.1, and `connection:
    /// close` when this connection ends after it.
    func responseHeadForClient(_ head: HTTPResponseHead) -> HTTPResponseHead {
        var head = head
        head.headers.meshStripHopByHop(removeExpect: false)
        if head.version != .http1_1 { head.version = .http1_1 }  // (a write copies the head's box)
        if (!req.keepAlive || quiescing) && !multiplexed { head.headers.add(name: "connection", value: "close") }
        if multiplexed { head.headers.meshTrimValueWhitespace() }
        return head
    }
}

/// A response head as the proxy handler passes it on: NIO's HTTP/1 head, or an HTTP/2 upstream's
/// checked HEADERS block (`H2Response`), which goes to an HTTP/2 client without HTTP/1 types.
enum ResponseHead {
    case http1(HTTPResponseHead)
    case h2(H2Response)

    var status: Int {
        switch self {
        case .http1(let head): return Int(head.status.code)
        case .h2(let response): return response.status
        }
    }

    /// What the exchange decides on (one pass over an HTTP/1 head; taken by the check of a block).
    var scan: ResponseScan {
        switch self {
        case .http1(let head): return head.headers.meshResponseScan()
        case .h2(let response): return response.scan
        }
    }
}
