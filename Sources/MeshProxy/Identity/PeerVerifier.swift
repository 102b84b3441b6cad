import Crypto
import Foundation
import MeshCore
import NIOCore
import NIOSSL
import SwiftASN1
import X509

/// What one connection's handshake proved about the peer (set by the verification callback, read on
/// the connection's event loop once the handshake completed).
final class TLSPeerState {
    /// The peer's SPIFFE ID, once its chain verified.
    var peer: SpiffeID?
    /// SHA-256 of the peer's leaf certificate (DER), hex: the `Hash` of `x-forwarded-client-cert`.
    var peerCertHash = ""
    /// Why verification refused the peer (nil: it did not, or it did not run).
    var refusal: TLSRefusal?
    /// The identity this side presented.
    var local: WorkloadCredential?
    /// Node inbound: the workload (index into `IdentityMaterial.workloads`) the server name chose.
    var workload: Int?
    var generation = 0
}

/// meshd's check of a peer certificate, in place of BoringSSL's (NIOSSL's custom verification): the
/// chain must lead to the trust bundle (swift-certificates' RFC 5280 verifier), the leaf must be
/// within its validity period and carry one SPIFFE ID, and that ID must be the one expected —
/// outbound, the service's `tls.identity`; inbound, any ID of this meshd's trust domains (authorization
/// decides per request who may call what). Each refusal keeps its reason for the metric and log line.
enum PeerVerifier {
    enum Expectation: Sendable {
        case inbound(trustDomains: Set<String>)
        case outbound(IdentityPattern)
    }

    struct Outcome: Sendable {
        var refusal: TLSRefusal?
        var peer: SpiffeID?
        var hash = ""
    }

    static func callback(
        roots: CertificateStore, expectation: Expectation, state: TLSPeerState, eventLoop: EventLoop
    ) -> NIOSSLCustomVerificationCallback {
        let bound = NIOLoopBound(state, eventLoop: eventLoop)
        return { presented, promise in
            let outcome = eventLoop.makePromise(of: Outcome.self)
            outcome.futureResult.whenSuccess { result in
                let state = bound.value
                state.refusal = result.refusal
                state.peer = result.peer
                state.peerCertHash = result.hash
                promise.succeed(result.refusal == nil ? .certificateVerified : .failed)
            }
            let der: [[UInt8]]
            do {
                der = try presented.map { try $0.toDERBytes() }
            } catch {
                outcome.succeed(Outcome(refusal: .handshake))
                return
            }
            // The chain check is asynchronous (swift-certificates' verifier): off the event loop,
            // once per handshake (pooled connections make that rare per request).
            Task { outcome.succeed(await verify(der: der, roots: roots, expectation: expectation, now: Date())) }
        }
    }

    static func verify(der: [[UInt8]], roots: CertificateStore, expectation: Expectation, now: Date) async -> Outcome {
        guard let leafDER = der.first, let leaf = try? Certificate(derEncoded: leafDER) else {
            return Outcome(refusal: .noCertificate)
        }
        let intermediates = der.dropFirst().compactMap { try? Certificate(derEncoded: $0) }
        for cert in [leaf] + intermediates {
            if cert.notValidAfter < now { return Outcome(refusal: .expired) }
            if cert.notValidBefore > now { return Outcome(refusal: .notYetValid) }
        }
        var verifier = Verifier(rootCertificates: roots) {
            RFC5280Policy()
            SPIFFELeafPolicy()
        }
        let result = await verifier.validate(leaf: leaf, intermediates: CertificateStore(intermediates))
        guard case .validCertificate = result else { return Outcome(refusal: .untrusted) }
        guard let id = IdentityLoader.spiffeID(of: leaf) else { return Outcome(refusal: .wrongIdentity) }
        switch expectation {
        case .inbound(let domains):
            guard domains.contains(id.trustDomain) else { return Outcome(refusal: .wrongIdentity, peer: id) }
        case .outbound(let pattern):
            guard pattern.matches(id) else { return Outcome(refusal: .wrongIdentity, peer: id) }
        }
        let hash = SHA256.hash(data: leafDER).map { String(format: "%02x", $0) }.joined()
        return Outcome(refusal: nil, peer: id, hash: hash)
    }

    /// The reason for a failed handshake: the verifier's, else what BoringSSL reported.
    static func reason(for error: Error, state: TLSPeerState) -> TLSRefusal {
        if let r = state.refusal { return r }
        let text = "\(error)"
        if text.contains("PEER_DID_NOT_RETURN_A_CERTIFICATE") || text.contains("CERTIFICATE_REQUIRED") {
            return .noCertificate
        }
        return .handshake
    }
}

/// The X509-SVID rules for the leaf: exactly one SPIFFE ID in its URI SAN (the SAN extension is
/// critical when the subject is empty, so the policy must claim it), and not a CA.
struct SPIFFELeafPolicy: VerifierPolicy {
    let verifyingCriticalExtensions: [ASN1ObjectIdentifier] = [.X509ExtensionID.subjectAlternativeName]

    func chainMeetsPolicyRequirements(chain: UnverifiedCertificateChain) async -> PolicyEvaluationResult {
        guard IdentityLoader.spiffeID(of: chain.leaf) != nil else {
            return .failsToMeetPolicy(reason: "the leaf certificate has no single SPIFFE ID")
        }
        if case .isCertificateAuthority? = try? chain.leaf.extensions.basicConstraints {
            return .failsToMeetPolicy(reason: "an X509-SVID leaf must not be a CA")
        }
        return .meetsPolicy
    }
}
