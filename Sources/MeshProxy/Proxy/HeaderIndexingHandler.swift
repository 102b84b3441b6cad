import MeshCore
import NIOCore
import NIOHPACK
import NIOHTTP2

/// First handler of every HTTP/2 stream channel meshd opens or accepts: gives each header of an
/// outgoing HEADERS frame the HPACK indexing `MeshCore.HeaderIndexing` chooses. NIO's HTTP/1 ↔ HTTP/2
/// codec marks every header indexable, so per-request values (`x-request-id`, `traceparent`, `:path`)
/// filled both ends' dynamic tables with entries nothing matches again, and every lookup of the
/// encoder scanned them (two thirds of meshd's HPACK encoding cost per stream). Blocks that need no
/// change pass as they came.
final class HeaderIndexingHandler: ChannelOutboundHandler, RemovableChannelHandler {
    typealias OutboundIn = HTTP2Frame.FramePayload
    typealias OutboundOut = HTTP2Frame.FramePayload

    init() {}

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        guard case .headers(var payload) = unwrapOutboundIn(data), let headers = Self.reindexed(payload.headers) else {
            context.write(data, promise: promise)
            return
        }
        payload.headers = headers
        context.write(wrapOutboundOut(.headers(payload)), promise: promise)
    }

    /// `headers` with the policy's indexing, or nil when every header already has it.
    static func reindexed(_ headers: HPACKHeaders) -> HPACKHeaders? {
        var first = 0
        for (name, value, indexing) in headers {
            if indexing != Self.indexing(name: name, valueLength: value.utf8.count) { break }
            first += 1
        }
        guard first < headers.count else { return nil }
        var out = HPACKHeaders()
        out.reserveCapacity(headers.count)
        var i = 0
        for (name, value, indexing) in headers {
            out.add(name: name, value: value, indexing: i < first ? indexing : Self.indexing(name: name, valueLength: value.utf8.count))
            i += 1
        }
        return out
    }

    static func indexing(name: String, valueLength: Int) -> HPACKIndexing {
        switch HeaderIndexing.of(name: name, valueLength: valueLength) {
        case .index: return .indexable
        case .noIndex: return .nonIndexable
        case .neverIndex: return .neverIndexed
        }
    }
}
