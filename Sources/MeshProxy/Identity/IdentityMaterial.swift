import Foundation
import MeshCore
import NIOSSL
import SwiftASN1
import X509

/// One workload identity ready to serve: its certificate chain and key, what the certificate says
/// (SPIFFE ID, serial, validity), and the TLS contexts built from them.
struct WorkloadCredential: Sendable {
    let id: SpiffeID
    /// Hex, as `openssl x509 -serial` prints it.
    let serial: String
    let notBefore: Date
    let notAfter: Date
    /// Server side: TLS 1.3, client certificate required, ALPN h2 and http/1.1.
    let serverContext: NIOSSLContext
    /// Client side, one per ALPN offer: `http/1.1` and `h2`.
    let clientHTTP1: NIOSSLContext
    let clientHTTP2: NIOSSLContext

    func clientContext(http2: Bool) -> NIOSSLContext { http2 ? clientHTTP2 : clientHTTP1 }
}

/// Everything meshd's mTLS uses at one time, built from the `identity` files: immutable, replaced as a
/// whole when the files change (each event loop holds the current one; new connections use it,
/// established ones keep theirs).
final class IdentityMaterial: Sendable {
    let generation: Int
    let roots: CertificateStore
    let rootCount: Int
    /// Sidecar: this pod's identity. Node: the node proxy's own (optional).
    let local: WorkloadCredential?
    /// Node mode: the node's workloads, and which one each pod runs as.
    let workloads: [WorkloadCredential]
    let podWorkload: [IPAddress: Int]
    /// Trust domains of this meshd's own identities: inbound callers must belong to one of them.
    let trustDomains: Set<String>

    init(
        generation: Int, roots: [Certificate], local: WorkloadCredential?, workloads: [WorkloadCredential],
        podWorkload: [IPAddress: Int]
    ) {
        self.generation = generation
        self.roots = CertificateStore(roots)
        self.rootCount = roots.count
        self.local = local
        self.workloads = workloads
        self.podWorkload = podWorkload
        self.trustDomains = Set(([local].compactMap { $0 } + workloads).map(\.id.trustDomain))
    }

    /// The identity a pod runs as (node mode), or the local one.
    func credential(forPod ip: IPAddress?) -> WorkloadCredential? {
        guard let ip, let i = podWorkload[ip] else { return nil }
        return workloads[i]
    }

    /// Node inbound: the credential a server name asks for (`PodServerName`); without a name, or for a
    /// name that is not a pod, the node's own identity (if any).
    func credential(serverName: String?) -> WorkloadCredential? {
        if let name = serverName, let ip = PodServerName.decode(name) { return credential(forPod: ip) }
        return local
    }

    /// Every credential with its label, for metrics and the admin API.
    var all: [WorkloadCredential] { [local].compactMap { $0 } + workloads }
}

/// Why an identity could not be loaded (at start: meshd does not start; on a change: the running
/// identity keeps serving).
struct IdentityLoadError: Error, CustomStringConvertible {
    let file: String
    let reason: String
    var description: String { "\(file): \(reason)" }
}

/// The bytes of the identity files, read off the event loops; compared between polls to notice a
/// change (Kubernetes swaps a Secret volume's `..data` symlink: the paths stay, the bytes change).
struct IdentityFiles: Equatable, Sendable {
    var contents: [String: [UInt8]] = [:]

    static func read(_ config: IdentityConfig) throws -> IdentityFiles {
        var files = IdentityFiles()
        var paths = [config.trustBundle]
        if let c = config.cert, let k = config.key { paths += [c, k] }
        for w in config.workloads { paths += [w.cert, w.key] }
        for path in paths where files.contents[path] == nil {
            guard let data = FileManager.default.contents(atPath: path) else {
                throw IdentityLoadError(file: path, reason: "cannot read the file")
            }
            files.contents[path] = Array(data)
        }
        return files
    }

    subscript(path: String) -> [UInt8] { contents[path] ?? [] }
}

enum IdentityLoader {
    /// Builds the material from `files`; every certificate must carry a SPIFFE ID, match its key, and
    /// be within its validity period.
    static func build(_ config: IdentityConfig, files: IdentityFiles, generation: Int, now: Date = Date()) throws
        -> IdentityMaterial
    {
        let roots = try parseCertificates(files[config.trustBundle], file: config.trustBundle)
        let nioRoots = try roots.map { try NIOSSLCertificate(bytes: Array($0.serializeAsPEM().derBytes), format: .der) }
        var local: WorkloadCredential?
        if let cert = config.cert, let key = config.key {
            local = try credential(certFile: cert, keyFile: key, files: files, roots: nioRoots, now: now)
        }
        var workloads: [WorkloadCredential] = []
        var podWorkload: [IPAddress: Int] = [:]
        for w in config.workloads {
            workloads.append(try credential(certFile: w.cert, keyFile: w.key, files: files, roots: nioRoots, now: now))
            for pod in w.pods { podWorkload[pod] = workloads.count - 1 }
        }
        return IdentityMaterial(generation: generation, roots: roots, local: local, workloads: workloads, podWorkload: podWorkload)
    }

    static func parseCertificates(_ bytes: [UInt8], file: String) throws -> [Certificate] {
        guard let text = String(bytes: bytes, encoding: .utf8) else { throw IdentityLoadError(file: file, reason: "not PEM text") }
        let certs: [Certificate]
        do {
            certs = try PEMDocument.parseMultiple(pemString: text).filter { $0.discriminator == "CERTIFICATE" }.map {
                try Certificate(derEncoded: $0.derBytes)
            }
        } catch {
            throw IdentityLoadError(file: file, reason: "not a PEM certificate file (\(error))")
        }
        guard !certs.isEmpty else { throw IdentityLoadError(file: file, reason: "no certificate in the file") }
        return certs
    }

    /// The SPIFFE ID in a certificate's URI SAN (exactly one, as the X509-SVID specification says).
    static func spiffeID(of cert: Certificate) -> SpiffeID? {
        guard let sans = try? cert.extensions.subjectAlternativeNames else { return nil }
        var found: [SpiffeID] = []
        for name in sans {
            if case .uniformResourceIdentifier(let uri) = name, let id = SpiffeID(uri) { found.append(id) }
        }
        return found.count == 1 ? found[0] : nil
    }

    static func serialHex(_ cert: Certificate) -> String {
        cert.serialNumber.bytes.map { String(format: "%02X", $0) }.joined()
    }

    static func credential(certFile: String, keyFile: String, files: IdentityFiles, roots: [NIOSSLCertificate], now: Date) throws
        -> WorkloadCredential
    {
        let chain = try parseCertificates(files[certFile], file: certFile)
        let leaf = chain[0]
        guard let keyText = String(bytes: files[keyFile], encoding: .utf8) else {
            throw IdentityLoadError(file: keyFile, reason: "not PEM text")
        }
        let key: Certificate.PrivateKey
        do {
            key = try Certificate.PrivateKey(pemEncoded: keyText)
        } catch {
            throw IdentityLoadError(file: keyFile, reason: "not a PEM private key (\(error))")
        }
        guard key.publicKey == leaf.publicKey else {
            throw IdentityLoadError(file: keyFile, reason: "the key does not match the certificate in \(certFile)")
        }
        guard let id = spiffeID(of: leaf) else {
            throw IdentityLoadError(file: certFile, reason: "the certificate has no SPIFFE ID (one spiffe:// URI SAN)")
        }
        guard leaf.notValidAfter > now else {
            throw IdentityLoadError(file: certFile, reason: "the certificate expired at \(leaf.notValidAfter)")
        }
        guard leaf.notValidBefore <= now.addingTimeInterval(300) else {
            throw IdentityLoadError(file: certFile, reason: "the certificate is not valid before \(leaf.notValidBefore)")
        }
        do {
            let nioChain = try chain.map { try NIOSSLCertificate(bytes: Array($0.serializeAsPEM().derBytes), format: .der) }
            let nioKey = try NIOSSLPrivateKey(bytes: files[keyFile], format: .pem)
            return WorkloadCredential(
                id: id, serial: serialHex(leaf), notBefore: leaf.notValidBefore, notAfter: leaf.notValidAfter,
                serverContext: try makeContext(server: true, chain: nioChain, key: nioKey, roots: roots, alpn: ["h2", "http/1.1"]),
                clientHTTP1: try makeContext(server: false, chain: nioChain, key: nioKey, roots: roots, alpn: ["http/1.1"]),
                clientHTTP2: try makeContext(server: false, chain: nioChain, key: nioKey, roots: roots, alpn: ["h2"]))
        } catch let e as IdentityLoadError {
            throw e
        } catch {
            throw IdentityLoadError(file: certFile, reason: "TLS rejected the certificate or key (\(error))")
        }
    }

    static func makeContext(
        server: Bool, chain: [NIOSSLCertificate], key: NIOSSLPrivateKey, roots: [NIOSSLCertificate], alpn: [String]
    ) throws -> NIOSSLContext {
        var tls =
            server
            ? TLSConfiguration.makeServerConfiguration(certificateChain: chain.map { .certificate($0) }, privateKey: .privateKey(key))
            : TLSConfiguration.makeClientConfiguration()
        if !server {
            tls.certificateChain = chain.map { .certificate($0) }
            tls.privateKey = .privateKey(key)
        }
        tls.minimumTLSVersion = .tlsv13
        // Closing waits this long for the peer's close_notify (NIO's default, 5 s, held up drains).
        tls.shutdownTimeout = .seconds(1)
        tls.trustRoots = .certificates(roots)
        // The peer's chain and SPIFFE ID are checked by meshd's verification callback (`PeerVerifier`);
        // this makes the server ask for (and require) a client certificate.
        tls.certificateVerification = .noHostnameVerification
        tls.applicationProtocols = alpn
        return try NIOSSLContext(configuration: tls)
    }
}
