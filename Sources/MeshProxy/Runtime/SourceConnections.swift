import NIOConcurrencyHelpers

/// Open connections per source address on one listener (node mode outbound: per pod), so one source
/// cannot take every connection the listener allows. Touched at accept and close only, never per
/// request; an entry goes when its count returns to zero, so the table holds at most the listener's
/// open connections.
final class SourceConnections: Sendable {
    private let counts = NIOLockedValueBox<[String: Int]>([:])

    init() {}

    /// Counts a new connection from `source`; false (and not counted) when the source already has
    /// `limit` open.
    func acquire(_ source: String, limit: Int) -> Bool {
        counts.withLockedValue { counts in
            let n = counts[source, default: 0]
            guard n < limit else { return false }
            counts[source] = n + 1
            return true
        }
    }

    func release(_ source: String) {
        counts.withLockedValue { counts in
            guard let n = counts[source] else { return }
            if n <= 1 { counts[source] = nil } else { counts[source] = n - 1 }
        }
    }

    /// Sources with open connections (for tests and the admin API).
    var sources: Int { counts.withLockedValue { $0.count } }
}
