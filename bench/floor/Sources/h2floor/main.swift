// h2floor: the forwarding core of the two candidate designs for meshd's h2 → h2 passthrough, with
// nothing else, to measure what each costs per stream before one is built into meshd
// (bench/h2floor/README.md). One event loop, one HTTP/2 (h2c) upstream connection shared by all
// downstream connections, request headers rewritten as meshd's smallest rewrite does (an
// `x-forwarded-for` and a fresh `x-request-id`), responses passed through.
//
//   frame  NIO's HTTP/2 handler without a multiplexer on both connections: one handler per
//          connection forwards HEADERS, DATA and RST_STREAM frames by stream id (a dictionary each
//          way) and returns connection-level flow-control credit itself.
//   child  NIO's multiplexer on both connections: a child channel per stream on each side, frame
//          payloads (HPACK headers, DATA) passed between the two stream channels — today's meshd
//          path without the HTTP/1 codec and without the proxy handler.
//
// usage: h2floor frame|child LISTEN_PORT UPSTREAM_IP UPSTREAM_PORT
//
// (A synchronous main: valgrind cannot run a Swift async main.)

import FloorSupport
import NIOCore
import NIOHPACK
import NIOHTTP2
import NIOPosix

#if canImport(Glibc)
    import Glibc
#endif

let (design, listenPort, upstreamAddress) = floorArguments(tool: "h2floor", designs: ["frame", "child"])
let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
let loop = group.next()

let serverSettings: HTTP2Settings = [
    HTTP2Setting(parameter: .maxConcurrentStreams, value: 100),
    HTTP2Setting(parameter: .initialWindowSize, value: 262_144),
]
let clientSettings: HTTP2Settings = [
    HTTP2Setting(parameter: .enablePush, value: 0),
    HTTP2Setting(parameter: .initialWindowSize, value: 65_535),
]

func rewriteRequest(_ headers: inout HPACKHeaders, clientIP: String, ids: inout RequestIDs) {
    headers.add(name: "x-forwarded-for", value: clientIP, indexing: .nonIndexable)
    headers.add(name: "x-request-id", value: ids.next(), indexing: .nonIndexable)
}

/// The harness has one upstream connection and no pool to replace it: when the endpoint ends it
/// (nginx sends GOAWAY after a burst of cancelled streams), it stops with a message instead of
/// leaving every later stream waiting.
func upstreamGone(_ why: String) -> Never {
    print("h2floor: upstream \(why); exiting")
    fflush(nil)
    exit(1)
}

/// Root-stream frames of the upstream connection in `child` (the streams are child channels).
final class ChildUpstreamConnection: ChannelInboundHandler {
    typealias InboundIn = HTTP2Frame

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if case .goAway(_, let code, _) = unwrapInboundIn(data).payload { upstreamGone("GOAWAY \(code)") }
    }

    func channelInactive(context: ChannelHandlerContext) { upstreamGone("connection closed") }
}

// MARK: - frame: one handler per connection, frames routed by stream id

/// Both ends of `frame` write frames to their connection as they come and flush once per read cycle.
protocol FrameWriting: ChannelInboundHandler where OutboundOut == HTTP2Frame {
    var context: ChannelHandlerContext? { get }
    var needsFlush: Bool { get set }
}

extension FrameWriting {
    func write(_ frame: HTTP2Frame) {
        context?.write(wrapOutboundOut(frame), promise: nil)
        needsFlush = true
    }

    func flushIfNeeded() {
        if needsFlush {
            needsFlush = false
            context?.flush()
        }
    }
}

final class FrameUpstream: FrameWriting {
    typealias InboundIn = HTTP2Frame
    typealias OutboundOut = HTTP2Frame

    var context: ChannelHandlerContext?
    var nextStreamID: Int32 = 1
    var routes: [HTTP2StreamID: (FrameDownstream, HTTP2StreamID)] = [:]
    var touched: [FrameDownstream] = []
    var uncredited = 0
    var needsFlush = false

    func handlerAdded(context: ChannelHandlerContext) { self.context = context }

    func open(_ headers: HPACKHeaders, endStream: Bool, owner: FrameDownstream, id: HTTP2StreamID) -> HTTP2StreamID {
        let streamID = HTTP2StreamID(nextStreamID)
        nextStreamID += 2
        routes[streamID] = (owner, id)
        write(HTTP2Frame(streamID: streamID, payload: .headers(.init(headers: headers, endStream: endStream))))
        return streamID
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        if !(error is NIOHTTP2Errors.StreamClosed) { upstreamGone("error \(error)") }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let frame = unwrapInboundIn(data)
        if case .goAway(_, let code, _) = frame.payload { upstreamGone("GOAWAY \(code)") }
        guard let (owner, id) = routes[frame.streamID] else { return }
        let ended: Bool
        switch frame.payload {
        case .headers(let headers): ended = headers.endStream
        case .data(let body):
            ended = body.endStream
            uncredited += body.data.readableBytes
        case .rstStream: ended = true
        default: return
        }
        if ended {
            routes[frame.streamID] = nil
            owner.streams[id] = nil
        }
        owner.write(HTTP2Frame(streamID: id, payload: frame.payload))
        if !owner.touched {
            owner.touched = true
            touched.append(owner)
        }
    }

    func channelInactive(context: ChannelHandlerContext) { upstreamGone("connection closed") }

    func channelReadComplete(context: ChannelHandlerContext) {
        // Connection-level credit for what was handed on (NIO's multiplexer does this in `child`).
        if uncredited >= 32_768 {
            write(HTTP2Frame(streamID: .rootStream, payload: .windowUpdate(windowSizeIncrement: uncredited)))
            uncredited = 0
        }
        for owner in touched {
            owner.touched = false
            owner.flushIfNeeded()
        }
        touched.removeAll(keepingCapacity: true)
        flushIfNeeded()
    }
}

final class FrameDownstream: FrameWriting {
    typealias InboundIn = HTTP2Frame
    typealias OutboundOut = HTTP2Frame

    let upstream: FrameUpstream
    var context: ChannelHandlerContext?
    /// Downstream stream id → upstream stream id.
    var streams: [HTTP2StreamID: HTTP2StreamID] = [:]
    var touched = false
    var needsFlush = false
    var clientIP = "unknown"
    var ids = RequestIDs()
    var uncredited = 0

    init(upstream: FrameUpstream) { self.upstream = upstream }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        clientIP = context.channel.remoteAddress?.ipAddress ?? "unknown"
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let frame = unwrapInboundIn(data)
        switch frame.payload {
        case .headers(var headers):
            if let upstreamID = streams[frame.streamID] {
                upstream.write(HTTP2Frame(streamID: upstreamID, payload: .headers(headers)))
            } else {
                rewriteRequest(&headers.headers, clientIP: clientIP, ids: &ids)
                streams[frame.streamID] = upstream.open(
                    headers.headers, endStream: headers.endStream, owner: self, id: frame.streamID)
            }
        case .data(let body):
            uncredited += body.data.readableBytes
            guard let upstreamID = streams[frame.streamID] else { return }
            upstream.write(HTTP2Frame(streamID: upstreamID, payload: frame.payload))
        case .rstStream:
            guard let upstreamID = streams.removeValue(forKey: frame.streamID) else { return }
            upstream.routes[upstreamID] = nil
            upstream.write(HTTP2Frame(streamID: upstreamID, payload: frame.payload))
        default:
            break
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        if uncredited >= 32_768 {
            write(HTTP2Frame(streamID: .rootStream, payload: .windowUpdate(windowSizeIncrement: uncredited)))
            uncredited = 0
        }
        flushIfNeeded()
        upstream.flushIfNeeded()
    }

    func channelInactive(context: ChannelHandlerContext) {
        // The client is gone: its streams' answers are dropped when they come. (No RST_STREAM: NIO
        // raises a connection error for a reset of a stream whose HEADERS it still holds back behind
        // the endpoint's concurrency limit, and this harness has no pool to replace the connection.)
        for (_, upstreamID) in streams { upstream.routes[upstreamID] = nil }
        streams.removeAll()
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        if !(error is NIOHTTP2Errors.StreamClosed) { context.close(promise: nil) }
    }
}

// MARK: - child: NIO's multiplexer on both sides, payloads passed between stream channels

final class ChildDownstream: ChannelInboundHandler {
    typealias InboundIn = HTTP2Frame.FramePayload
    typealias OutboundOut = HTTP2Frame.FramePayload

    let multiplexer: NIOHTTP2Handler.StreamMultiplexer
    let clientIP: String
    var context: ChannelHandlerContext?
    var upstream: ChildUpstream?
    var waiting: [HTTP2Frame.FramePayload] = []
    var upstreamNeedsFlush = false
    var ids = RequestIDs()

    init(multiplexer: NIOHTTP2Handler.StreamMultiplexer, clientIP: String) {
        self.multiplexer = multiplexer
        self.clientIP = clientIP
    }

    func handlerAdded(context: ChannelHandlerContext) { self.context = context }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var payload = unwrapInboundIn(data)
        if let upstream {
            upstream.context?.write(upstream.wrapOutboundOut(payload), promise: nil)
            upstreamNeedsFlush = true
            return
        }
        if waiting.isEmpty, case .headers(var headers) = payload {
            rewriteRequest(&headers.headers, clientIP: clientIP, ids: &ids)
            payload = .headers(headers)
            waiting.append(payload)
            let bound = NIOLoopBound(self, eventLoop: context.eventLoop)
            let promise = context.eventLoop.makePromise(of: Channel.self)
            multiplexer.createStreamChannel(promise: promise) { stream in
                stream.eventLoop.makeCompletedFuture {
                    try stream.pipeline.syncOperations.addHandler(ChildUpstream(downstream: bound.value))
                }
            }
            promise.futureResult.assumeIsolated().whenFailure { _ in bound.value.context?.close(promise: nil) }
        } else {
            waiting.append(payload)
        }
    }

    func upstreamActive(_ upstream: ChildUpstream) {
        self.upstream = upstream
        for payload in waiting { upstream.context?.write(upstream.wrapOutboundOut(payload), promise: nil) }
        waiting.removeAll()
        upstream.context?.flush()
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        if upstreamNeedsFlush {
            upstreamNeedsFlush = false
            upstream?.context?.flush()
        }
    }

    // A client that goes away leaves its upstream stream to finish (as in `frame`, no RST_STREAM).
}

final class ChildUpstream: ChannelInboundHandler {
    typealias InboundIn = HTTP2Frame.FramePayload
    typealias OutboundOut = HTTP2Frame.FramePayload

    let downstream: ChildDownstream
    var context: ChannelHandlerContext?
    var needsFlush = false

    init(downstream: ChildDownstream) { self.downstream = downstream }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        downstream.upstreamActive(self)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        downstream.context?.write(data, promise: nil)
        needsFlush = true
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        if needsFlush {
            needsFlush = false
            downstream.context?.flush()
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        downstream.context?.close(promise: nil)
    }
}

// MARK: - wiring

let upstreamChannel: Channel
let upstreamMultiplexer: NIOHTTP2Handler.StreamMultiplexer?
let frameUpstream = try loop.submit { NIOLoopBound(FrameUpstream(), eventLoop: loop) }.wait()

if design == "frame" {
    upstreamChannel = try ClientBootstrap(group: loop)
        .channelOption(.tcpOption(.tcp_nodelay), value: 1)
        .channelInitializer { channel in
            channel.eventLoop.makeCompletedFuture {
                let sync = channel.pipeline.syncOperations
                try sync.addHandler(NIOHTTP2Handler(mode: .client, initialSettings: clientSettings))
                try sync.addHandler(frameUpstream.value)
            }
        }
        .connect(to: upstreamAddress).wait()
    upstreamMultiplexer = nil
} else {
    var clientConnection = NIOHTTP2Handler.ConnectionConfiguration()
    clientConnection.initialSettings = clientSettings
    let connection = clientConnection
    upstreamChannel = try ClientBootstrap(group: loop)
        .channelOption(.tcpOption(.tcp_nodelay), value: 1)
        .channelInitializer { channel in
            channel.eventLoop.makeCompletedFuture {
                _ = try channel.pipeline.syncOperations.configureHTTP2Pipeline(
                    mode: .client, connectionConfiguration: connection, streamConfiguration: .init()
                ) { pushed in pushed.close() }
                try channel.pipeline.syncOperations.addHandler(ChildUpstreamConnection())
            }
        }
        .connect(to: upstreamAddress).wait()
    let channel = upstreamChannel
    upstreamMultiplexer = try channel.eventLoop.submit {
        try channel.pipeline.syncOperations.handler(type: NIOHTTP2Handler.self).syncMultiplexer()
    }.wait()
}

let server = try ServerBootstrap(group: loop)
    .serverChannelOption(.backlog, value: 256)
    .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
    .childChannelOption(.tcpOption(.tcp_nodelay), value: 1)
    .childChannelInitializer { channel in
        channel.eventLoop.makeCompletedFuture {
            let sync = channel.pipeline.syncOperations
            if let multiplexer = upstreamMultiplexer {
                var connection = NIOHTTP2Handler.ConnectionConfiguration()
                connection.initialSettings = serverSettings
                let clientIP = channel.remoteAddress?.ipAddress ?? "unknown"
                _ = try sync.configureHTTP2Pipeline(
                    mode: .server, connectionConfiguration: connection, streamConfiguration: .init()
                ) { stream in
                    stream.eventLoop.makeCompletedFuture {
                        try stream.pipeline.syncOperations.addHandler(
                            ChildDownstream(multiplexer: multiplexer, clientIP: clientIP))
                    }
                }
            } else {
                try sync.addHandler(NIOHTTP2Handler(mode: .server, initialSettings: serverSettings))
                try sync.addHandler(FrameDownstream(upstream: frameUpstream.value))
            }
        }
    }
    .bind(host: "127.0.0.1", port: listenPort).wait()

print("h2floor \(design) listening on 127.0.0.1:\(listenPort), upstream \(upstreamAddress)")
try server.closeFuture.wait()
