import Atomics
import MeshCore
import NIOCore

/// First handler of every downstream connection: enforces the listener's connection bound and, in
/// node mode, the allowed source CIDRs; counts open connections; and notes whether any bytes arrived
/// since the last complete request (so a half-sent request head is told apart from an idle keep-alive).
final class ConnectionGuard: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer

    let direction: Direction
    let shared: SharedRuntime
    let allowedSources: [CIDR]?
    let openCount: ManagedAtomic<Int>
    let maxConnections: Int
    private var counted = false
    /// Set on every read; the proxy handler clears it when a request completes.
    var sawBytes = false
    /// Outbound: where an iptables REDIRECT sent this connection (SO_ORIGINAL_DST), if it was.
    var originalDestination: SocketAddress?

    init(direction: Direction, shared: SharedRuntime, allowedSources: [CIDR]?, openCount: ManagedAtomic<Int>, maxConnections: Int) {
        self.direction = direction
        self.shared = shared
        self.allowedSources = allowedSources
        self.openCount = openCount
        self.maxConnections = maxConnections
    }

    private var context: ChannelHandlerContext?

    func handlerAdded(context: ChannelHandlerContext) { self.context = context }
    func handlerRemoved(context: ChannelHandlerContext) { self.context = nil }

    /// Writes bytes below the HTTP codec and closes: for a reply when no request is in progress at
    /// the HTTP layer (the 408 of a request head that never completed).
    func writeRawAndClose(_ text: String) {
        guard let context else { return }
        context.writeAndFlush(NIOAny(context.channel.allocator.buffer(string: text))).assumeIsolated().whenComplete { _ in
            context.close(promise: nil)
        }
    }

    func channelActive(context: ChannelHandlerContext) {
        if let allowed = allowedSources {
            let ip = context.channel.remoteAddress?.ipAddress.flatMap { IPAddress($0) }
            if ip == nil || !allowed.contains(where: { $0.contains(ip!) }) {
                shared.metrics.connectionsRefused[direction.rawValue][0].increment()
                shared.logger.warning(
                    "refused connection: source not allowed",
                    metadata: ["direction": "\(direction.label)", "source": "\(context.channel.remoteAddress?.description ?? "?")"])
                context.close(promise: nil)
                return
            }
        }
        let open = openCount.wrappingIncrementThenLoad(ordering: .relaxed)
        counted = true
        if open > maxConnections {
            shared.metrics.connectionsRefused[direction.rawValue][1].increment()
            shared.logger.warning("refused connection: listener at http.maxConnections", metadata: ["limit": "\(maxConnections)"])
            context.close(promise: nil)
            return
        }
        shared.metrics.connectionsOpen[direction.rawValue].increment()
        shared.metrics.connectionsTotal[direction.rawValue].increment()
        if direction == .outbound {
            MeshRuntime.originalDestination(context.channel).assumeIsolated().whenSuccess { [self] dst in
                self.originalDestination = dst
            }
        }
        context.fireChannelActive()
    }

    func channelInactive(context: ChannelHandlerContext) {
        if counted {
            counted = false
            let open = openCount.wrappingDecrementThenLoad(ordering: .relaxed)
            if open + 1 <= maxConnections { shared.metrics.connectionsOpen[direction.rawValue].decrement() }
        }
        context.fireChannelInactive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        sawBytes = true
        context.fireChannelRead(data)
    }
}
