/// Ejects endpoints that keep failing (Envoy's consecutive-5xx and consecutive-gateway-failure
/// detection). An ejected endpoint returns after base × (times ejected), capped; each `interval` an
/// endpoint spends healthy lowers its multiplier by one. Never more than `maxEjectionPercent` of a
/// service is ejected — but at least one endpoint may be when the service has several.
///
/// Keyed by endpoint address, so it survives discovery updates. Time in nanoseconds.
public struct OutlierDetector: Sendable {
    public struct Config: Sendable, Equatable {
        public var consecutive5xx = 5
        public var consecutiveGatewayFailures = 5
        public var baseEjectionTime: MeshDuration = .seconds(30)
        public var maxEjectionTime: MeshDuration = .seconds(300)
        public var maxEjectionPercent = 10
        public var interval: MeshDuration = .seconds(10)
        public var enabled = true
        public init() {}
    }

    struct Entry: Sendable {
        var consecutive5xx = 0
        var consecutiveGateway = 0
        var ejections = 0
        var ejectedUntil: Int64?
        var healthySince: Int64 = 0
    }

    public enum Action: Sendable, Equatable {
        case eject(address: String, until: Int64, times: Int)
    }

    public let config: Config
    private var entries: [String: Entry] = [:]

    public init(config: Config) { self.config = config }

    /// Records an attempt's outcome, counting consecutive failures here (one event loop's view);
    /// returns an ejection when this one crosses a threshold and the ejection cap allows it. `total`
    /// is the number of endpoints of the service.
    public mutating func record(address: String, outcome: AttemptOutcome, total: Int, now: Int64) -> Action? {
        guard config.enabled else { return nil }
        var e = entries[address] ?? Entry(healthySince: now)
        let failure = outcome.isFailure
        if failure.fiveXX || failure.gateway {
            if failure.fiveXX { e.consecutive5xx += 1 }
            if failure.gateway { e.consecutiveGateway += 1 }
        } else {
            e.consecutive5xx = 0
            e.consecutiveGateway = 0
        }
        return record(address: address, consecutive: (e.consecutive5xx, e.consecutiveGateway), entry: e, total: total, now: now)
    }

    /// Records an outcome whose consecutive-failure counts were kept elsewhere (shared by every event
    /// loop, so the thresholds hold for the whole proxy); returns an ejection when they cross a
    /// threshold and the ejection cap allows it.
    public mutating func record(address: String, consecutive: (fiveXX: Int, gateway: Int), total: Int, now: Int64) -> Action? {
        guard config.enabled else { return nil }
        return record(
            address: address, consecutive: consecutive, entry: entries[address] ?? Entry(healthySince: now), total: total, now: now)
    }

    private mutating func record(address: String, consecutive: (fiveXX: Int, gateway: Int), entry: Entry, total: Int, now: Int64)
        -> Action?
    {
        var e = entry
        if e.ejectedUntil != nil {
            entries[address] = e
            return nil
        }
        e.consecutive5xx = consecutive.fiveXX
        e.consecutiveGateway = consecutive.gateway
        var action: Action?
        let tripped =
            (config.consecutive5xx > 0 && e.consecutive5xx >= config.consecutive5xx)
            || (config.consecutiveGatewayFailures > 0 && e.consecutiveGateway >= config.consecutiveGatewayFailures)
        if tripped && canEject(total: total) {
            e.ejections += 1
            let base = config.baseEjectionTime.nanoseconds
            let (scaled, overflow) = base.multipliedReportingOverflow(by: Int64(e.ejections))
            let duration = overflow ? config.maxEjectionTime.nanoseconds : min(scaled, config.maxEjectionTime.nanoseconds)
            e.ejectedUntil = now + duration
            e.consecutive5xx = 0
            e.consecutiveGateway = 0
            action = .eject(address: address, until: now + duration, times: e.ejections)
        }
        entries[address] = e
        return action
    }

    /// How many endpoints may be ejected at once out of `total`.
    public func maxEjected(total: Int) -> Int {
        guard total > 1 else { return 0 }
        return max(1, total * config.maxEjectionPercent / 100)
    }

    func canEject(total: Int) -> Bool { ejectedCount < maxEjected(total: total) }

    public var ejectedCount: Int { entries.values.filter { $0.ejectedUntil != nil }.count }

    /// Marks an ejection decided elsewhere (another event loop) so this detector agrees.
    public mutating func markEjected(address: String, until: Int64, times: Int) {
        var e = entries[address] ?? Entry()
        e.ejectedUntil = until
        e.ejections = max(e.ejections, times)
        e.consecutive5xx = 0
        e.consecutiveGateway = 0
        entries[address] = e
    }

    public func ejectedUntil(_ address: String) -> Int64? { entries[address]?.ejectedUntil }

    /// Returns endpoints whose ejection is over, and lowers the multiplier of endpoints healthy for
    /// a whole interval.
    public mutating func expire(now: Int64) -> [String] {
        var returned: [String] = []
        for (address, var e) in entries {
            if let until = e.ejectedUntil {
                if now >= until {
                    e.ejectedUntil = nil
                    e.healthySince = now
                    returned.append(address)
                }
            } else if e.ejections > 0 && now - e.healthySince >= config.interval.nanoseconds {
                e.ejections -= 1
                e.healthySince = now
            }
            entries[address] = e
        }
        return returned.sorted()
    }

    /// Forgets endpoints that left the service.
    public mutating func retain(addresses: Set<String>) {
        entries = entries.filter { addresses.contains($0.key) }
    }
}

/// A token bucket: `rate` tokens per second up to `burst`. Time in nanoseconds.
public struct TokenBucket: Sendable, Equatable {
    public let rate: Double
    public let burst: Double
    public private(set) var tokens: Double
    private var last: Int64

    public init(rate: Double, burst: Double, now: Int64) {
        self.rate = rate
        self.burst = max(burst, 1)
        self.tokens = max(burst, 1)
        self.last = now
    }

    private mutating func refill(_ now: Int64) {
        if now > last {
            tokens = min(burst, tokens + Double(now - last) / 1e9 * rate)
            last = now
        }
    }

    /// Takes a token if one is there.
    public mutating func take(now: Int64) -> Bool {
        refill(now)
        guard tokens >= 1 else { return false }
        tokens -= 1
        return true
    }

    /// Whole seconds until a token is available (for `retry-after`), at least 1.
    public func retryAfterSeconds(now: Int64) -> Int {
        let have = min(burst, tokens + Double(max(0, now - last)) / 1e9 * rate)
        guard rate > 0 else { return 60 }
        return max(1, Int(((1 - have) / rate).rounded(.up)))
    }

    /// True when the bucket has been full for a while (safe to forget).
    public func isFull(now: Int64) -> Bool {
        tokens + Double(max(0, now - last)) / 1e9 * rate >= burst
    }
}
