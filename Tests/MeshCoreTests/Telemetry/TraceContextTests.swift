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
        let long = Substring(String(repeating: "x", count: TraceDecision.maxRequestIDBytes + 1))
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
