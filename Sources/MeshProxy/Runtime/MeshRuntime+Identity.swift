import CoreMetrics
import Dispatch
import Foundation
import Logging
import MeshCore
import NIOConcurrencyHelpers
import NIOCore
import NIOSSL
import NIOTLS

// Workload identities: loading and reloading the files, publishing them to every loop, and the
// inbound side of mTLS (server name → identity, NIOSSL, the caller on the connection).
extension MeshRuntime {
    /// Reads and builds the identity at start; throws (meshd does not start) when it is unusable.
    func loadIdentityAtStart() async throws {
        guard let config = config.identity else { return }
        let files = try IdentityFiles.read(config)
        let material = try IdentityLoader.build(config, files: files, generation: 1)
        identityState.withLockedValue {
            $0.files = files
            $0.material = material
        }
        recordIdentityGauges(material)
        for loop in loops { try await loop.eventLoop.submit { loop.installIdentity(material) }.get() }
        shared.logger.info(
            "workload identity loaded",
            metadata: ["identities": "\(material.all.map { "\($0.id) serial \($0.serial)" }.joined(separator: ", "))"])
    }

    /// Polls the identity files every `identity.reloadInterval` (on the control queue): a change that
    /// two reads agree on is built and, if valid, published; a broken or mismatched pair is logged
    /// and counted, and the running identity keeps serving.
    func watchIdentity() {
        guard let interval = config.identity?.reloadInterval else { return }
        control.asyncAfter(deadline: .now() + .nanoseconds(Int(interval.nanoseconds))) { [self] in
            guard !self.stopping.load(ordering: .relaxed) else { return }
            self.checkIdentityFiles()
            self.watchIdentity()
        }
    }

    func checkIdentityFiles() {
        dispatchPrecondition(condition: .onQueue(control))
        guard let config = config.identity else { return }
        guard let files = try? IdentityFiles.read(config) else { return }  // a swap in progress: next time
        let (changed, settled, generation) = identityState.withLockedValue { state -> (Bool, Bool, Int) in
            guard files != state.files else {
                state.pending = nil
                return (false, false, 0)
            }
            if state.pending == files { return (true, true, (state.material?.generation ?? 0) + 1) }
            state.pending = files
            return (true, false, 0)
        }
        guard changed, settled else { return }
        do {
            let material = try IdentityLoader.build(config, files: files, generation: generation)
            identityState.withLockedValue {
                $0.files = files
                $0.pending = nil
                $0.material = material
            }
            recordIdentityGauges(material)
            for loop in loops { loop.eventLoop.execute { loop.installIdentity(material) } }
            shared.metrics.counter("meshd_identity_reloads_total", [("result", "ok")]).increment()
            shared.logger.info(
                "workload identity reloaded: new connections use it",
                metadata: ["identities": "\(material.all.map { "\($0.id) serial \($0.serial)" }.joined(separator: ", "))"])
        } catch {
            identityState.withLockedValue {
                $0.files = files  // not tried again until the files change again
                $0.pending = nil
            }
            shared.metrics.counter("meshd_identity_reloads_total", [("result", "rejected")]).increment()
            shared.logger.error(
                "workload identity change rejected; the running identity keeps serving", metadata: ["problem": "\(error)"])
        }
    }

    /// `meshd_identity_expiry_timestamp_seconds{spiffe_id}`: when each certificate expires (Unix time).
    func recordIdentityGauges(_ material: IdentityMaterial) {
        for c in material.all {
            Gauge(
                label: "meshd_identity_expiry_timestamp_seconds", dimensions: [("spiffe_id", c.id.description)],
                factory: shared.metrics.factoryForDynamicMetrics
            ).record(c.notAfter.timeIntervalSince1970)
        }
    }

    /// The identities in force, for the admin API (`GET /identity`).
    func identityJSON() -> JSONValue {
        guard let material = identityState.withLockedValue({ $0.material }) else { return .object([("enabled", .bool(false))]) }
        let now = Date()
        func describe(_ c: WorkloadCredential, pods: [IPAddress]) -> JSONValue {
            var fields: [(String, JSONValue)] = [
                ("spiffeId", .string(c.id.description)), ("serial", .string(c.serial)),
                ("notBefore", .string(ISO8601DateFormatter().string(from: c.notBefore))),
                ("notAfter", .string(ISO8601DateFormatter().string(from: c.notAfter))),
                ("secondsLeft", .int(Int64(c.notAfter.timeIntervalSince(now)))),
            ]
            if !pods.isEmpty { fields.append(("pods", .array(pods.map { .string($0.description) }))) }
            return .object(fields)
        }
        var out: [(String, JSONValue)] = [("enabled", .bool(true)), ("generation", .int(Int64(material.generation)))]
        out.append(("inboundTLS", .string(config.effectiveInboundTLS.rawValue)))
        out.append(("trustBundleCertificates", .int(Int64(material.rootCount))))
        if let local = material.local { out.append(("local", describe(local, pods: []))) }
        let workloads = material.workloads.enumerated().map { i, w in
            describe(w, pods: material.podWorkload.filter { $0.value == i }.map(\.key).sorted { $0.description < $1.description })
        }
        if !workloads.isEmpty { out.append(("workloads", .array(workloads))) }
        return .object(out)
    }

    /// Inbound mTLS on a connection whose first bytes were a TLS ClientHello: the identity to present
    /// (node mode: the pod the server name names), NIOSSL's server handler with meshd's verification,
    /// then `configure` with the negotiated protocol and the caller once the handshake completed.
    /// Returns false (the connection is closed) when there is no identity to present.
    static func addInboundTLS(
        channel: Channel, loop: LoopContext, configure: @escaping (_ http2: Bool, _ info: TLSConnectionInfo?) throws -> Void
    ) throws -> Bool {
        guard let material = loop.identity else { return false }
        let shared = loop.shared
        let state = TLSPeerState()
        state.generation = material.generation
        let timeout = TimeAmount.nanoseconds(loop.snapshot.config.identity?.handshakeTimeout.nanoseconds ?? 10_000_000_000)
        let finisher = InboundTLSHandler(state: state, shared: shared, timeout: timeout, configure: configure)
        let sync = channel.pipeline.syncOperations
        let eventLoop = channel.eventLoop
        func sslHandler(_ credential: WorkloadCredential) -> NIOSSLServerHandler {
            NIOSSLServerHandler(
                context: credential.serverContext,
                customVerificationCallback: PeerVerifier.callback(
                    roots: material.roots, expectation: .inbound(trustDomains: material.trustDomains), state: state,
                    eventLoop: eventLoop))
        }
        if loop.snapshot.config.mode == .node {
            // The server name says which pod (and so which workload identity) the caller wants.
            let bound = NIOLoopBound((finisher, state), eventLoop: eventLoop)
            let sni = ByteToMessageHandler(
                SNIHandler { result in
                    let (finisher, state) = bound.value
                    var name: String?
                    if case .hostname(let n) = result { name = n }
                    let pod = name.flatMap(PodServerName.decode)
                    guard let credential = material.credential(serverName: name) else {
                        shared.tlsRefused(
                            .unknownServerName, .inbound, peer: channel.remoteAddress?.description ?? "?",
                            detail: "server name \(name ?? "(none)") names no pod with an identity on this node")
                        channel.close(promise: nil)
                        return eventLoop.makeFailedFuture(ChannelError.ioOnClosedChannel)
                    }
                    state.local = credential
                    state.workload = pod.flatMap { material.podWorkload[$0] }
                    return eventLoop.makeCompletedFuture {
                        let sync = channel.pipeline.syncOperations
                        try sync.addHandler(sslHandler(credential), position: .before(finisher))
                        try sync.addHandler(TLSWriteCoalescer(), position: .before(finisher))
                    }
                })
            try sync.addHandler(sni)
            try sync.addHandler(finisher)
            return true
        }
        guard let local = material.local else { return false }
        state.local = local
        try sync.addHandler(sslHandler(local))
        try sync.addHandler(TLSWriteCoalescer())
        try sync.addHandler(finisher)
        return true
    }
}

/// The identity files as last read, and the material in force (control side; loops hold their own
/// reference).
struct IdentityState {
    var files = IdentityFiles()
    var pending: IdentityFiles?
    var material: IdentityMaterial?
}
