import CoreMetrics
import Logging
import MeshCore
import NIOCore
import NIOSSL
import NIOTLS
import X509

/// The caller a downstream connection proved with mTLS, and the identity meshd answered as.
struct TLSConnectionInfo {
    let peer: SpiffeID
    /// SHA-256 of the caller's certificate, hex.
    let peerCertHash: String
    /// The identity meshd presented (sidecar: its own; node: the destination workload's).
    let local: SpiffeID?
    /// Node mode: the workload whose identity was presented (its pods are the only destinations).
    let workload: Int?

    /// `x-forwarded-client-cert` as Envoy writes it (`By`, `Hash`, `URI`): built once per connection,
    /// set on each of its requests.
    let forwardedClientCert: String

    init(peer: SpiffeID, peerCertHash: String, local: SpiffeID?, workload: Int?) {
        self.peer = peer
        self.peerCertHash = peerCertHash
        self.local = local
        self.workload = workload
        var parts: [String] = []
        if let local { parts.append("By=\(local)") }
        parts.append("Hash=\(peerCertHash)")
        parts.append("URI=\(peer)")
        forwardedClientCert = parts.joined(separator: ";")
    }
}

/// Counts and logs TLS handshake outcomes (`meshd_tls_handshakes_total`, `meshd_tls_handshake_errors_total`).
extension SharedRuntime {
    func tlsRefused(_ reason: TLSRefusal, _ direction: Direction, peer: String, detail: String = "") {
        metrics.counter("meshd_tls_handshake_errors_total", [("direction", direction.label), ("reason", reason.rawValue)])
            .increment()
        if let left = refusedLog.admit() {
            logger.info(
                "TLS handshake refused",
                metadata: [
                    "direction": "\(direction.label)", "reason": "\(reason.rawValue)", "peer": "\(peer)", "detail": "\(detail)",
                    "suppressed": "\(left)",
                ])
        }
    }

    /// `meshd_authorization_total{decision, rule}` (rule: `rule-N` or `default`).
    func authorizationCounter(_ d: AuthorizationPolicy.Decision) -> CoreMetrics.Counter {
        metrics.counter("meshd_authorization_total", [("decision", d.allowed ? "allow" : "deny"), ("rule", d.ruleLabel)])
    }

    func tlsHandshakeOK(_ direction: Direction) {
        metrics.counter("meshd_tls_handshakes_total", [("direction", direction.label)]).increment()
    }
}

/// Inbound, after NIOSSL's server handler: bounds the handshake's duration, and once it completed
/// (the peer verified), records the caller on the connection and sets up HTTP/1.1 or HTTP/2 by ALPN;
/// then it leaves. A refused handshake is counted with its reason and the connection closed.
final class InboundTLSHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer

    private let state: TLSPeerState
    private let shared: SharedRuntime
    private let timeout: TimeAmount
    private let configure: (_ http2: Bool, _ info: TLSConnectionInfo?) throws -> Void
    private var timer: Scheduled<Void>?
    private var done = false
    private var pending: [ByteBuffer] = []

    init(
        state: TLSPeerState, shared: SharedRuntime, timeout: TimeAmount,
        configure: @escaping (_ http2: Bool, _ info: TLSConnectionInfo?) throws -> Void
    ) {
        self.state = state
        self.shared = shared
        self.timeout = timeout
        self.configure = configure
    }

    func handlerAdded(context: ChannelHandlerContext) {
        timer = context.eventLoop.assumeIsolated().scheduleTask(in: timeout) { [self] in
            guard !self.done else { return }
            self.done = true
            self.shared.tlsRefused(.timeout, .inbound, peer: context.channel.remoteAddress?.description ?? "?")
            context.close(promise: nil)
        }
    }

    func handlerRemoved(context: ChannelHandlerContext) { timer?.cancel() }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if !done, let tls = event as? TLSUserEvent, case .handshakeCompleted(let alpn) = tls {
            done = true
            timer?.cancel()
            shared.tlsHandshakeOK(.inbound)
            let info = state.peer.map {
                TLSConnectionInfo(peer: $0, peerCertHash: state.peerCertHash, local: state.local?.id, workload: state.workload)
            }
            do {
                try configure(alpn == "h2", info)
            } catch {
                context.close(promise: nil)
                return
            }
            for bytes in pending { context.fireChannelRead(wrapInboundOut(bytes)) }
            if !pending.isEmpty { context.fireChannelReadComplete() }
            pending.removeAll()
            context.pipeline.syncOperations.removeHandler(self, promise: nil)
        }
        context.fireUserInboundEventTriggered(event)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if done {
            context.fireChannelRead(data)
        } else {
            pending.append(unwrapInboundIn(data))
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        guard !done else { return context.fireErrorCaught(error) }
        done = true
        timer?.cancel()
        let peer = context.channel.remoteAddress?.description ?? "?"
        if error is NIOSSLError || error is BoringSSLError || state.refusal != nil {
            shared.tlsRefused(PeerVerifier.reason(for: error, state: state), .inbound, peer: peer, detail: "\(error)")
        } else {
            shared.tlsRefused(.handshake, .inbound, peer: peer, detail: "\(error)")
        }
        context.close(promise: nil)
    }

    func channelInactive(context: ChannelHandlerContext) {
        timer?.cancel()
        context.fireChannelInactive()
    }
}

/// Outbound, after NIOSSL's client handler: completes `verified` when the handshake completed (the
/// endpoint proved the expected identity), fails it with the refusal otherwise, so a pooled connection
/// is handed out only once it is known to reach the right workload.
final class OutboundTLSHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer

    struct Refused: Error, CustomStringConvertible {
        let reason: TLSRefusal
        let detail: String
        var description: String { "TLS handshake refused (\(reason.rawValue)): \(detail)" }
    }

    let verified: EventLoopPromise<Void>
    private let state: TLSPeerState
    private let shared: SharedRuntime
    private let timeout: TimeAmount
    private var timer: Scheduled<Void>?
    private var done = false

    init(state: TLSPeerState, shared: SharedRuntime, timeout: TimeAmount, eventLoop: EventLoop) {
        self.state = state
        self.shared = shared
        self.timeout = timeout
        self.verified = eventLoop.makePromise()
    }

    func handlerAdded(context: ChannelHandlerContext) {
        timer = context.eventLoop.assumeIsolated().scheduleTask(in: timeout) { [self] in
            self.fail(.timeout, detail: "no handshake within \(self.timeout)", context: context)
        }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        timer?.cancel()
        if !done {
            done = true
            verified.fail(ChannelError.ioOnClosedChannel)
        }
    }

    private func fail(_ reason: TLSRefusal, detail: String, context: ChannelHandlerContext) {
        guard !done else { return }
        done = true
        timer?.cancel()
        shared.tlsRefused(reason, .outbound, peer: context.channel.remoteAddress?.description ?? "?", detail: detail)
        verified.fail(Refused(reason: reason, detail: detail))
        context.close(promise: nil)
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if !done, let tls = event as? TLSUserEvent, case .handshakeCompleted = tls {
            done = true
            timer?.cancel()
            shared.tlsHandshakeOK(.outbound)
            verified.succeed(())
            context.fireUserInboundEventTriggered(event)
            // Verified: nothing left to watch, so every later read skips this handler.
            context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        if !done {
            fail(PeerVerifier.reason(for: error, state: state), detail: "\(error)", context: context)
            return
        }
        context.fireErrorCaught(error)
    }

    func channelInactive(context: ChannelHandlerContext) {
        if !done {
            fail(state.refusal ?? .handshake, detail: "the endpoint closed the connection during the handshake", context: context)
        }
        context.fireChannelInactive()
    }
}

/// How an upstream pool's connections are secured: the credential presented, the identity expected
/// of the endpoint, and the server name (node proxies: the pod).
struct UpstreamTLS {
    let credential: WorkloadCredential
    let roots: CertificateStore
    let expected: IdentityPattern
    let serverName: String?
    let handshakeTimeout: TimeAmount

    /// Adds NIOSSL's client handler and the verification wait to a new upstream channel.
    func addHandlers(to channel: Channel, http2: Bool, shared: SharedRuntime) throws -> OutboundTLSHandler {
        let state = TLSPeerState()
        state.local = credential
        let ssl = try NIOSSLClientHandler(
            context: credential.clientContext(http2: http2), serverHostname: serverName,
            customVerificationCallback: PeerVerifier.callback(
                roots: roots, expectation: .outbound(expected), state: state, eventLoop: channel.eventLoop))
        let waiter = OutboundTLSHandler(state: state, shared: shared, timeout: handshakeTimeout, eventLoop: channel.eventLoop)
        try channel.pipeline.syncOperations.addHandler(ssl)
        try channel.pipeline.syncOperations.addHandler(TLSWriteCoalescer())
        try channel.pipeline.syncOperations.addHandler(waiter)
        return waiter
    }
}
