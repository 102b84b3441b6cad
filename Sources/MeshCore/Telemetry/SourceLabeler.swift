/// Which source pods get a label of their own in `meshd_source_requests_total{source}` (node mode),
/// so that a noisy neighbour is visible without an unbounded number of series.
///
/// At most `slots` sources are labelled; every other request is counted under `source="other"`.
/// Each series is a true counter (it never goes down): a source's labelled count starts at zero when
/// it gets its label, and `other` is the total minus what the labelled series counted since they
/// got their labels. A source gets a free label when it sends requests; when all labels are taken,
/// a source whose requests in the last evaluation window are more than twice those of the quietest
/// labelled source takes that source's label (the quiet source's series ends, its later requests
/// count in `other`). Evaluated at most once per `window`.
public struct SourceLabeler: Sendable {
    public let slots: Int
    public let window: Int64

    struct Slot: Sendable {
        var base: UInt64  // the source's lifetime count when it got its label
        var lastSeen: UInt64  // its lifetime count at the previous evaluation
    }

    private var labelled: [String: Slot] = [:]
    /// Lifetime counts at the previous evaluation, of every tracked source (for window deltas).
    private var previous: [String: UInt64] = [:]
    private var lastEvaluation: Int64?

    public init(slots: Int = 10, window: Int64 = 10_000_000_000) {
        self.slots = slots
        self.window = window
    }

    /// The series to expose now: labelled sources with their counts, and `other`.
    /// `counts`: lifetime requests per tracked source (merged over loops); `total`: every request,
    /// tracked or not.
    public mutating func series(counts: [String: UInt64], total: UInt64, now: Int64) -> (sources: [(String, UInt64)], other: UInt64) {
        if lastEvaluation.map({ now - $0 >= window }) ?? true {
            evaluate(counts, now: now)
        }
        var out: [(String, UInt64)] = []
        var labelledSum: UInt64 = 0
        for (source, slot) in labelled {
            let c = (counts[source] ?? slot.base) &- slot.base
            out.append((source, c))
            labelledSum &+= c
        }
        out.sort { $0.0 < $1.0 }
        return (out, total >= labelledSum ? total - labelledSum : 0)
    }

    mutating func evaluate(_ counts: [String: UInt64], now: Int64) {
        lastEvaluation = now
        func delta(_ s: String) -> UInt64 { (counts[s] ?? 0) &- (previous[s] ?? 0) }
        // Busiest first, by requests in the last window (then by name, for a stable order).
        let candidates = counts.keys.filter { labelled[$0] == nil && delta($0) > 0 }
            .sorted { (delta($0), $1) > (delta($1), $0) }
        for source in candidates {
            if labelled.count < slots {
                labelled[source] = Slot(base: counts[source] ?? 0, lastSeen: counts[source] ?? 0)
                continue
            }
            guard let quietest = labelled.keys.min(by: { (delta($0), $0) < (delta($1), $1) }) else { break }
            guard delta(source) > 2 * delta(quietest) else { break }  // later candidates are quieter still
            labelled[quietest] = nil
            labelled[source] = Slot(base: counts[source] ?? 0, lastSeen: counts[source] ?? 0)
        }
        for s in labelled.keys { labelled[s]?.lastSeen = counts[s] ?? 0 }
        previous = counts
    }
}
