import Foundation
import Testing

@testable import MeshCore

@Suite("Request identity and trace context")
struct TraceContextTests {
    static let valid = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

    @Test func keepsWhatTheRequestCarries() {
        var rng = SplitMix64(seed: 1)
        let d = TraceDecision.decide(.init(requestID: "abc-123", traceparent: Substring(Self.valid)), rng: &rng)
        #expect(d.requestID == "abc-123" && d.addRequestID == nil)
        #expect(d.traceID == "4bf92f3577b34da6a3ce929d0e0e4736")
        #expect(d.setTraceparent == nil && !d.dropMalformed)
    }

    @Test func addsARequestIDAndStartsATrace() throws {
        var rng = SplitMix64(seed: 2)
        let d = TraceDecision.decide(.init(), rng: &rng)
        let id = try #require(d.addRequestID)
        #expect(id == d.requestID)
        // UUID v4: 8-4-4-4-12, version nibble 4, variant 10xx.
        let groups = id.split(separator: "-").map(\.count)
        #expect(groups == [8, 4, 4, 4, 12])
        #expect(Array(id)[14] == "4" && "89ab".contains(Array(id)[19]))
        // Exactly the generator's two words, most significant nibble first.
        var words = SplitMix64(seed: 2)
        func hex(_ w: UInt64) -> String {
            let s = String(w, radix: 16)
            return String(repeating: "0", count: 16 - s.count) + s
        }
        let hi = hex((words.next() & 0xFFFF_FFFF_FFFF_0FFF) | 0x4000)
        let lo = hex((words.next() & 0x3FFF_FFFF_FFFF_FFFF) | 0x8000_0000_0000_0000)
        #expect(id.replacingOccurrences(of: "-", with: "") == hi + lo)
        let tp = try #require(d.setTraceparent)
        let parsed = try #require(Traceparent(Substring(tp)))
        #expect(parsed.traceID == Substring(d.traceID) && parsed.flags == "00" && parsed.version == "00")
        // The trace id and the parent id: the generator's next three words, written as hex in place.
        #expect(d.traceID == hex(words.next()) + hex(words.next()))
        #expect(parsed.parentID == hex(words.next() | 1))
        #expect(tp.utf8.count == 55)
        #expect(!d.dropMalformed)
        // Seeded: the same ids again; another request: different ones.
        var again = SplitMix64(seed: 2)
        #expect(TraceDecision.decide(.init(), rng: &again) == d)
        #expect(TraceDecision.decide(.init(), rng: &rng).requestID != d.requestID)
    }

    @Test func aMalformedTraceparentIsReplaced() throws {
        var rng = SplitMix64(seed: 3)
        for bad in [
            "garbage", "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",  // upper case
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",  // zero trace id
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",  // zero parent id
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  // version ff
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",  // v00 has four fields
        ] {
            let d = TraceDecision.decide(.init(requestID: "r", traceparent: Substring(bad)), rng: &rng)
            #expect(d.dropMalformed, "\(bad)")
            #expect(Traceparent(Substring(try #require(d.setTraceparent))) != nil)
        }
        // A later version may append fields.
        #expect(Traceparent("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-more") != nil)
    }

    @Test func aB3TraceKeepsItsIDInTheNewTraceparent() throws {
        var rng = SplitMix64(seed: 4)
        let single = TraceDecision.decide(.init(b3: "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1"), rng: &rng)
        #expect(single.traceID == "80f198ee56343ba864fe8b2a57d3eff7")
        #expect(try #require(single.setTraceparent).hasSuffix("-01"))  // sampled, as B3 said
        let multi = TraceDecision.decide(.init(b3TraceID: "463AC35C9F6413AD", b3Sampled: "0"), rng: &rng)
        #expect(multi.traceID == "0000000000000000463ac35c9f6413ad")  // 64-bit id, left-padded
        #expect(try #require(multi.setTraceparent).hasSuffix("-00"))
        // A sampling-only b3 carries no trace id: a new one.
        let bare = TraceDecision.decide(.init(b3: "1"), rng: &rng)
        #expect(bare.traceID.count == 32 && bare.traceID != single.traceID)
    }

    @Test func anOversizedRequestIDIsReplaced() {
        var rng = SplitMix64(seed: 5)
        let long = String(repeating: "x", count: TraceDecision.maxRequestIDBytes + 1)
        let d = TraceDecision.decide(.init(requestID: long), rng: &rng)
        #expect(d.addRequestID != nil && d.requestID.count == 36)
    }
}

@Suite("Access-log configuration")
struct AccessLogConfigTests {
    @Test func boolOrSection() throws {
        #expect(try ConfigLoader.load(yaml: "accessLog: true").accessLog)
        let c = try ConfigLoader.load(yaml: "accessLog: {path: /var/log/meshd/access.log, sampleRatio: 0.25}")
        #expect(c.accessLog && c.accessLogOptions.path == "/var/log/meshd/access.log" && c.accessLogOptions.sampleRatio == 0.25)
        #expect(try !ConfigLoader.load(yaml: "accessLog: {enabled: false, sampleRatio: 0.5}").accessLog)
        #expect(throws: ConfigError.self) { try ConfigLoader.load(yaml: "accessLog: {sampleRatio: 2}") }
        #expect(throws: ConfigError.self) { try ConfigLoader.load(yaml: "accessLog: {colour: red}") }
    }

    @Test func sampling() {
        var o = AccessLogConfig()
        #expect(o.samples(errorReply: false, draw: 0.99))
        o.sampleRatio = 0.1
        #expect(o.samples(errorReply: false, draw: 0.05) && !o.samples(errorReply: false, draw: 0.5))
        #expect(o.samples(errorReply: true, draw: 0.5))  // meshd's own error replies always
        o.sampleRatio = 0
        #expect(!o.samples(errorReply: false, draw: 0))
    }
}

/// The byte-level `Traceparent` and `B3` parsers against the definitions they replaced (`Character`
/// splits, `lowercased()`), on seeded mutations of valid values.
@Suite("Trace header parsing on bytes")
struct TraceHeaderParsingTests {
    /// The former parser: split on `-`, each part checked.
    static func referenceTraceparent(_ value: Substring) -> [Substring]? {
        guard value.utf8.count >= 55 else { return nil }
        let parts = value.split(separator: "-", maxSplits: 4, omittingEmptySubsequences: false)
        guard parts.count >= 4 else { return nil }
        let (version, trace, parent, flags) = (parts[0], parts[1], parts[2], parts[3])
        func hex(_ s: Substring) -> Bool { s.allSatisfy { "0123456789abcdef".contains($0) } }
        guard version.utf8.count == 2, hex(version), version != "ff" else { return nil }
        if version == "00" && (parts.count != 4 || value.utf8.count != 55) { return nil }
        guard trace.utf8.count == 32, hex(trace), trace.contains(where: { $0 != "0" }) else { return nil }
        guard parent.utf8.count == 16, hex(parent), parent.contains(where: { $0 != "0" }) else { return nil }
        guard flags.utf8.count == 2, hex(flags) else { return nil }
        return [version, trace, parent, flags]
    }

    /// The former B3 parsers.
    static func referenceB3TraceID(_ s: Substring) -> String? {
        let lower = s.lowercased()
        guard lower.utf8.count == 16 || lower.utf8.count == 32, lower.allSatisfy({ "0123456789abcdef".contains($0) }),
            lower.contains(where: { $0 != "0" })
        else { return nil }
        return lower.utf8.count == 16 ? String(repeating: "0", count: 16) + lower : lower
    }

    static func referenceB3Single(_ value: Substring) -> B3.Found? {
        let parts = value.split(separator: "-", omittingEmptySubsequences: false)
        guard parts.count >= 2, let trace = referenceB3TraceID(parts[0]), parts[1].utf8.count == 16,
            parts[1].allSatisfy({ "0123456789abcdef".contains($0) })
        else { return nil }
        return B3.Found(traceID: trace, sampled: parts.count >= 3 ? B3.sampled(parts[2]) : nil)
    }

    /// A valid value with a few bytes replaced, inserted or removed (ASCII: the formats are ASCII, and
    /// `Character` and byte splits differ only where a combining scalar follows a dash).
    static func mutate(_ base: String, rng: inout SplitMix64) -> String {
        let alphabet = Array("0123456789abcdefABCDEFxyz-ff00 \u{10}\u{7f}".utf8)
        var bytes = Array(base.utf8)
        for _ in 0..<Int(rng.next() % 3) {
            let pick = alphabet[Int(rng.next() % UInt64(alphabet.count))]
            let at = Int(rng.next() % UInt64(bytes.count + 1))
            switch rng.next() % 4 {
            case 0 where at < bytes.count: bytes[at] = pick
            case 1: bytes.insert(pick, at: at)
            case 2 where at < bytes.count: bytes.remove(at: at)
            default: break
            }
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    @Test func traceparentMatchesTheSplitDefinition() {
        var rng = SplitMix64(seed: 11)
        let bases = [
            TraceContextTests.valid, "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-more",
            "00-00000000000000000000000000000001-0000000000000001-00", "fe-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-ff",
        ]
        var accepted = 0
        for i in 0..<20_000 {
            let text = Self.mutate(bases[i % bases.count], rng: &rng)
            // A slice inside a larger string too: offsets are relative to the value's start.
            let value = i % 2 == 0 ? Substring(text) : Substring("x: " + text).dropFirst(3)
            let parsed = Traceparent(value)
            let reference = Self.referenceTraceparent(value)
            #expect(parsed.map { [$0.version, $0.traceID, $0.parentID, $0.flags] } == reference, "\(text)")
            if parsed != nil { accepted += 1 }
        }
        #expect(accepted > 2_000 && accepted < 18_000)  // both outcomes well covered
    }

    @Test func b3MatchesTheSplitDefinition() {
        var rng = SplitMix64(seed: 12)
        let bases = [
            "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1", "463AC35C9F6413AD-e457b5a2e4d86bd1-d-05e3ac9a4f6e3b90",
            "80f198ee56343ba8-e457b5a2e4d86bd1", "0000000000000000-e457b5a2e4d86bd1-0",
        ]
        var accepted = 0
        for i in 0..<20_000 {
            let value = Substring(Self.mutate(bases[i % bases.count], rng: &rng))
            let found = B3.single(value)
            #expect(found == Self.referenceB3Single(value), "\(value)")
            let id = value.prefix(32)
            #expect(B3.traceID(id) == Self.referenceB3TraceID(id), "\(id)")
            if found != nil { accepted += 1 }
        }
        #expect(accepted > 2_000 && accepted < 18_000)
    }
}
