import Atomics
import Logging
import MeshCore
import NIOConcurrencyHelpers
import NIOCore

/// State shared by all event loops: metrics handles, the logger, the published snapshot (read on the
/// control side; each loop keeps its own copy), and open-connection counters.
final class SharedRuntime: Sendable {
    let metrics: MeshMetrics
    let logger: Logger
    let ready = ManagedAtomic<Bool>(false)
    let outboundOpen = ManagedAtomic<Int>(0)
    let inboundOpen = ManagedAtomic<Int>(0)
    private let current: NIOLockedValueBox<ResolvedSnapshot>

    init(metrics: MeshMetrics, logger: Logger, snapshot: ResolvedSnapshot) {
        self.metrics = metrics
        self.logger = logger
        self.current = NIOLockedValueBox(snapshot)
    }

    /// The latest published snapshot (control side only; never read per request).
    var snapshot: ResolvedSnapshot {
        get { current.withLockedValue { $0 } }
        set { current.withLockedValue { $0 = newValue } }
    }
}
