import ArgumentParser
import Crypto
import Foundation
import MeshCore
import SwiftASN1
import X509

#if canImport(Glibc)
    import Glibc
#endif

/// `meshctl identity`: a small CA for users without one (swift-certificates, swift-crypto), and a look
/// at a certificate's SPIFFE ID and validity.
struct IdentityCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "identity",
        abstract: "Make a mesh CA and workload certificates with SPIFFE IDs, or show one.",
        subcommands: [Init.self, Issue.self, Show.self, Status.self])

    struct Init: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Write a root CA (ECDSA P-256): DIR/ca.crt and DIR/ca.key.")
        @Option(help: "The trust domain (spiffe://TRUST_DOMAIN/...).") var trustDomain: String = "cluster.local"
        @Option(help: "How long the root is valid (e.g. 8760h).") var ttl: String = "87600h"
        @Option(help: "Directory to write to.") var out: String

        func run() async throws {
            guard SpiffeID("spiffe://\(trustDomain)") != nil else { throw ValidationError("invalid trust domain '\(trustDomain)'") }
            let root = try IdentityCommand.makeRoot(trustDomain: trustDomain, seconds: try IdentityCommand.seconds(ttl))
            try IdentityCommand.write(out, [("ca.crt", root.certPEM, 0o644), ("ca.key", root.keyPEM, 0o600)])
            print("wrote \(out)/ca.crt and \(out)/ca.key (trust domain \(trustDomain), serial \(root.serial))")
        }
    }

    struct Issue: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Issue a workload certificate: DIR/tls.crt, DIR/tls.key and DIR/ca.crt (as a Kubernetes TLS Secret).")
        @Option(help: "The CA directory (from `identity init`).") var ca: String
        @Option(help: "The workload's SPIFFE ID, spiffe://TD/ns/NAMESPACE/sa/ACCOUNT.") var spiffeId: String
        @Option(help: "How long the certificate is valid (e.g. 24h, 90m).") var ttl: String = "24h"
        @Option(help: "Directory to write to.") var out: String
        @Option(
            help:
                "Start of validity, as seconds from now (negative: in the past; write --not-before-offset=-7200). The certificate is valid for --ttl from there."
        ) var notBeforeOffset: Int = -60
        @Option(
            name: .customLong("dns-name"),
            help:
                "A DNS name to add to the subject alternative names (repeatable), for clients that check a host name as well, such as gRPC's TLS credentials."
        ) var dnsNames: [String] = []

        func run() async throws {
            guard let id = SpiffeID(spiffeId) else { throw ValidationError("'\(spiffeId)' is not a SPIFFE ID") }
            for name in dnsNames where !IdentityCommand.isDNSName(name) {
                throw ValidationError("'\(name)' is not a DNS name (letters, digits, '-' and '.', labels of 1 to 63)")
            }
            let caCertText = try String(contentsOfFile: "\(ca)/ca.crt", encoding: .utf8)
            let caKeyText = try String(contentsOfFile: "\(ca)/ca.key", encoding: .utf8)
            let leaf = try IdentityCommand.issueLeaf(
                id: id, dnsNames: dnsNames, caCertPEM: caCertText, caKeyPEM: caKeyText,
                notBefore: Date().addingTimeInterval(TimeInterval(notBeforeOffset)), seconds: try IdentityCommand.seconds(ttl))
            try IdentityCommand.write(
                out,
                [
                    ("tls.crt", leaf.certPEM, 0o644), ("tls.key", leaf.keyPEM, 0o600),
                    ("ca.crt", caCertText.hasSuffix("\n") ? caCertText : caCertText + "\n", 0o644),
                ])
            print("wrote \(out)/tls.crt, tls.key, ca.crt for \(id) (serial \(leaf.serial), valid until \(leaf.notAfter))")
        }
    }

    struct Show: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Print a certificate's SPIFFE ID, issuer and validity.")
        @Argument(help: "A PEM certificate file.") var file: String
        @Option(name: [.short, .customLong("output")], help: "table or json.") var output: OutputFormat = .table

        func run() async throws {
            let text = try String(contentsOfFile: file, encoding: .utf8)
            let cert = try Certificate(pemEncoded: text)
            var spiffe: [String] = []
            var dns: [String] = []
            if let sans = try cert.extensions.subjectAlternativeNames {
                for name in sans {
                    switch name {
                    case .uniformResourceIdentifier(let u): spiffe.append(u)
                    case .dnsName(let d): dns.append(d)
                    default: break
                    }
                }
            }
            let left = Int(cert.notValidAfter.timeIntervalSinceNow)
            let iso = ISO8601DateFormatter()
            let fields: [(String, String)] = [
                ("spiffeId", spiffe.first ?? ""), ("dnsNames", dns.joined(separator: ",")), ("issuer", cert.issuer.description),
                ("subject", cert.subject.description),
                ("serial", IdentityCommand.hex(cert)), ("notBefore", iso.string(from: cert.notValidBefore)),
                ("notAfter", iso.string(from: cert.notValidAfter)), ("secondsLeft", "\(left)"),
                (
                    "ca",
                    "\((try? cert.extensions.basicConstraints).map { if case .isCertificateAuthority = $0 { return true } else { return false } } ?? false)"
                ),
            ]
            if output == .json {
                let body = fields.map { k, v in
                    k == "secondsLeft" || k == "ca" ? "\"\(k)\": \(v)" : "\"\(k)\": \(JSONValue.quoted(v))"
                }
                print("{" + body.joined(separator: ", ") + "}")
            } else {
                for (k, v) in fields { print(k.padding(toLength: 12, withPad: " ", startingAt: 0) + v) }
            }
        }
    }

    struct Status: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "The identities a running meshd serves with: SPIFFE ID, serial, expiry (admin GET /identity).")
        @OptionGroup var options: AdminOptions

        func run() async throws {
            let (raw, value) = try await fetchJSON(options, "/identity")
            if options.output == .json {
                print(raw, terminator: "")
                return
            }
            guard let obj = value as? [String: Any], obj["enabled"] as? Bool == true else {
                print("no identity configured (plaintext only)")
                return
            }
            var rows: [[String]] = []
            func add(_ kind: String, _ c: [String: Any]) {
                let left = (c["secondsLeft"] as? Int).map { "\($0 / 3600)h\(($0 % 3600) / 60)m" } ?? "?"
                rows.append([
                    kind, c["spiffeId"] as? String ?? "", c["serial"] as? String ?? "", c["notAfter"] as? String ?? "", left,
                    (c["pods"] as? [String])?.joined(separator: ",") ?? "",
                ])
            }
            if let local = obj["local"] as? [String: Any] { add("local", local) }
            for w in obj["workloads"] as? [[String: Any]] ?? [] { add("workload", w) }
            print("inbound.tls: \(obj["inboundTLS"] as? String ?? "?")  generation: \(obj["generation"] as? Int ?? 0)")
            printTable(["KIND", "SPIFFE ID", "SERIAL", "NOT AFTER", "LEFT", "PODS"], rows)
        }
    }

    /// A certificate and its key, PEM-encoded.
    struct Issued {
        var certPEM: String
        var keyPEM: String
        var serial: String
        var notAfter: Date
    }

    /// A self-signed root CA (ECDSA P-256) for `trustDomain`.
    static func makeRoot(trustDomain: String, seconds: TimeInterval) throws -> Issued {
        let key = P256.Signing.PrivateKey()
        let name = try DistinguishedName {
            OrganizationName("meshd")
            CommonName("meshd root CA \(trustDomain)")
        }
        let now = Date()
        let cert = try Certificate(
            version: .v3, serialNumber: Certificate.SerialNumber(), publicKey: .init(key.publicKey),
            notValidBefore: now.addingTimeInterval(-300), notValidAfter: now.addingTimeInterval(seconds),
            issuer: name, subject: name, signatureAlgorithm: .ecdsaWithSHA256,
            extensions: try Certificate.Extensions {
                Critical(BasicConstraints.isCertificateAuthority(maxPathLength: nil))
                Critical(KeyUsage(keyCertSign: true, cRLSign: true))
                SubjectKeyIdentifier(hash: Certificate.PublicKey(key.publicKey))
            },
            issuerPrivateKey: .init(key))
        return Issued(
            certPEM: try cert.serializeAsPEM().pemString + "\n", keyPEM: key.pemRepresentation + "\n", serial: hex(cert),
            notAfter: cert.notValidAfter)
    }

    /// An X509-SVID: `id` in its URI SAN (plus `dnsNames`), for client and server use, signed by the CA.
    static func issueLeaf(
        id: SpiffeID, dnsNames: [String] = [], caCertPEM: String, caKeyPEM: String, notBefore: Date, seconds: TimeInterval
    ) throws -> Issued {
        let caCert = try Certificate(pemEncoded: caCertPEM)
        let caKey = try P256.Signing.PrivateKey(pemRepresentation: caKeyPEM)
        let key = P256.Signing.PrivateKey()
        let cert = try Certificate(
            version: .v3, serialNumber: Certificate.SerialNumber(), publicKey: .init(key.publicKey),
            notValidBefore: notBefore, notValidAfter: notBefore.addingTimeInterval(seconds),
            issuer: caCert.subject, subject: try DistinguishedName { OrganizationName("meshd") },
            signatureAlgorithm: .ecdsaWithSHA256,
            extensions: try Certificate.Extensions {
                Critical(BasicConstraints.notCertificateAuthority)
                Critical(KeyUsage(digitalSignature: true, keyEncipherment: true))
                try ExtendedKeyUsage([.serverAuth, .clientAuth])
                Critical(SubjectAlternativeNames([.uniformResourceIdentifier(id.description)] + dnsNames.map { .dnsName($0) }))
                AuthorityKeyIdentifier(keyIdentifier: try caCert.extensions.subjectKeyIdentifier?.keyIdentifier)
            },
            issuerPrivateKey: .init(caKey))
        return Issued(
            certPEM: try cert.serializeAsPEM().pemString + "\n", keyPEM: key.pemRepresentation + "\n", serial: hex(cert),
            notAfter: cert.notValidAfter)
    }

    /// A host name as RFC 1123 spells it (a leading `*.` wildcard label allowed), at most 253 bytes.
    static func isDNSName(_ name: String) -> Bool {
        var labels = name.split(separator: ".", omittingEmptySubsequences: false)
        if labels.first == "*" { labels.removeFirst() }
        guard !labels.isEmpty, name.utf8.count <= 253 else { return false }
        return labels.allSatisfy { label in
            (1...63).contains(label.utf8.count) && label.first != "-" && label.last != "-"
                && label.utf8.allSatisfy { c in
                    (c >= UInt8(ascii: "a") && c <= UInt8(ascii: "z")) || (c >= UInt8(ascii: "A") && c <= UInt8(ascii: "Z"))
                        || (c >= UInt8(ascii: "0") && c <= UInt8(ascii: "9")) || c == UInt8(ascii: "-")
                }
        }
    }

    static func hex(_ cert: Certificate) -> String { cert.serialNumber.bytes.map { String(format: "%02X", $0) }.joined() }

    /// `24h`, `90m`, `3600s`, `7d`.
    static func seconds(_ text: String) throws -> TimeInterval {
        let units: [Character: Double] = ["s": 1, "m": 60, "h": 3600, "d": 86400]
        guard let unit = text.last, let mult = units[unit], let n = Double(text.dropLast()), n > 0 else {
            throw ValidationError("'\(text)' is not a duration such as 24h, 90m or 7d")
        }
        return n * mult
    }

    static func write(_ dir: String, _ files: [(String, String, Int)]) throws {
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        for (name, text, mode) in files {
            let path = "\(dir)/\(name)"
            // Written to a temporary name and renamed: a watcher never sees half a file.
            let tmp = "\(dir)/.\(name).tmp"
            try text.write(toFile: tmp, atomically: false, encoding: .utf8)
            try FileManager.default.setAttributes([.posixPermissions: mode], ofItemAtPath: tmp)
            guard rename(tmp, path) == 0 else { throw ValidationError("cannot write \(path): errno \(errno)") }
        }
    }
}
