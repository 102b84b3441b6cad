import Testing

@testable import MeshCore

@Suite("Per-loop latency histogram")
struct LatencyHistogramTests {
    @Test func recordsIntoBucketsAndMerges() {
        var a = LatencyHistogram()
        a.record(nanoseconds: 400_000)  // 0.4 ms → le 0.0005
        a.record(nanoseconds: 3_000_000)  // 3 ms → le 0.005
        var b = LatencyHistogram()
        b.record(nanoseconds: 60_000_000_000)  // 60 s → +Inf
        a.merge(b)
        #expect(a.count == 3)
        #expect(a.counts[2] == 1)
        #expect(a.counts[5] == 1)
        #expect(a.counts.last == 1)
        #expect(a.cumulative.last == 3)
        #expect(a.sumNanos == 60_003_400_000)
    }

    @Test func quantilesInterpolateInsideBuckets() {
        var h = LatencyHistogram()
        for _ in 0..<100 { h.record(nanoseconds: 7_000_000) }  // all in (5 ms, 10 ms]
        let p50 = h.quantile(0.5)!
        #expect(p50 > 0.005 && p50 <= 0.010)
        #expect(LatencyHistogram().quantile(0.5) == nil)
    }

    @Test func jsonRendering() {
        let v: JSONValue = .object([("a", 1), ("b", [true, .null, "x\"y\n"]), ("c", .double(1.5))])
        #expect(v.rendered() == "{\"a\":1,\"b\":[true,null,\"x\\\"y\\n\"],\"c\":1.5}")
    }
}
