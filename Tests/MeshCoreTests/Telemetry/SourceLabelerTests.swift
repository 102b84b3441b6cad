import Testing

@testable import MeshCore

@Suite("Source pod labels (node mode)")
struct SourceLabelerTests {
    static let s: Int64 = 1_000_000_000

    @Test func firstSourcesGetLabelsAndTheRestIsOther() {
        var l = SourceLabeler(slots: 2, window: 10 * Self.s)
        let (sources, other) = l.series(counts: ["a": 5, "b": 3, "c": 1], total: 12, now: 0)
        // The two busiest of the window take the labels, from zero; the rest is `other`.
        #expect(sources.map(\.0) == ["a", "b"] && sources.map(\.1) == [0, 0])
        #expect(other == 12)
        let next = l.series(counts: ["a": 9, "b": 4, "c": 2], total: 18, now: 1 * Self.s)
        #expect(next.sources.map(\.1) == [4, 1] && next.other == 13)
    }

    @Test func everySeriesOnlyGrows() {
        var l = SourceLabeler(slots: 3, window: 10 * Self.s)
        var counts: [String: UInt64] = [:]
        var total: UInt64 = 0
        var last: [String: UInt64] = [:]
        var rng = SplitMix64(seed: 7)
        for step in 0..<200 {
            // Sources come and go; a noisy one appears half way.
            for _ in 0..<50 {
                let s = step > 100 && rng.next() % 2 == 0 ? "noisy" : "pod-\(rng.next() % 8)"
                counts[s, default: 0] += 1
                total += 1
            }
            let (sources, other) = l.series(counts: counts, total: total, now: Int64(step) * Self.s)
            var now: [String: UInt64] = Dictionary(uniqueKeysWithValues: sources)
            now["other"] = other
            for (k, v) in now where last[k] != nil { #expect(v >= last[k]!, "\(k) went down at step \(step)") }
            // A series that ended never comes back with a smaller value under the same name unless it
            // restarted from zero as a new label (then its past is gone from the exposition).
            last = now
            #expect(sources.count <= 3)
            #expect(sources.reduce(0) { $0 + $1.1 } + other == total)
        }
        // The noisy pod (half of all requests) took a label.
        #expect(last["noisy"] != nil)
    }

    @Test func aQuietLabelIsKeptUnlessSomeoneIsMuchBusier() {
        var l = SourceLabeler(slots: 1, window: 10 * Self.s)
        _ = l.series(counts: ["a": 10], total: 10, now: 0)
        // b sends less than twice a's window: a keeps its label.
        var r = l.series(counts: ["a": 20, "b": 15], total: 35, now: 10 * Self.s)
        #expect(r.sources.map(\.0) == ["a"])
        // b sends far more than a in the next window: b takes the label, from zero.
        r = l.series(counts: ["a": 21, "b": 60], total: 81, now: 20 * Self.s)
        #expect(r.sources.map(\.0) == ["b"] && r.sources[0].1 == 0 && r.other == 81)
    }

    @Test func noSlotsMeansOtherOnly() {
        var l = SourceLabeler(slots: 0)
        let r = l.series(counts: ["a": 3], total: 3, now: 0)
        #expect(r.sources.isEmpty && r.other == 3)
    }
}
