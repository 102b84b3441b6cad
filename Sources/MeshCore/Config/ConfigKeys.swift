import Yams

/// One key of a config section, listed once: its name, its bound as `docs/configuration.md` states
/// it, and how its value is decoded into the section. The decoder takes the allowed keys of a section
/// from its table, and a test checks that every key and bound appears in the documentation.
struct ConfigKey<Target>: Sendable {
    let name: String
    /// The accepted values, as the documentation writes them; nil for a key whose value is a section
    /// with its own key table.
    let bound: String?
    let decode: @Sendable (inout Decoder, Node, String, inout Target) -> Void

    static func int(_ name: String, _ range: ClosedRange<Int>, _ field: WritableKeyPath<Target, Int> & Sendable) -> ConfigKey {
        ConfigKey(name: name, bound: "\(range.lowerBound)…\(range.upperBound)") { d, node, path, target in
            if let v = d.int(node, path, range: range) { target[keyPath: field] = v }
        }
    }

    static func duration(
        _ name: String, max: MeshDuration? = nil, _ field: WritableKeyPath<Target, MeshDuration> & Sendable
    ) -> ConfigKey {
        ConfigKey(name: name, bound: ConfigKeys.durationBound(max)) { d, node, path, target in
            if let v = d.duration(node, path, max: max ?? ConfigKeys.longestDuration) { target[keyPath: field] = v }
        }
    }

    /// A duration that may be left out (nil: the section's default applies).
    static func duration(
        _ name: String, max: MeshDuration? = nil, _ field: WritableKeyPath<Target, MeshDuration?> & Sendable
    ) -> ConfigKey {
        ConfigKey(name: name, bound: ConfigKeys.durationBound(max)) { d, node, path, target in
            target[keyPath: field] = d.duration(node, path, max: max ?? ConfigKeys.longestDuration)
        }
    }

    static func bool(_ name: String, _ field: WritableKeyPath<Target, Bool> & Sendable) -> ConfigKey {
        ConfigKey(name: name, bound: "bool") { d, node, path, target in
            if let v = d.bool(node, path) { target[keyPath: field] = v }
        }
    }

    /// A number in `range` (`bound` as documented).
    static func number(
        _ name: String, _ range: ClosedRange<Double>, bound: String, _ field: WritableKeyPath<Target, Double> & Sendable
    ) -> ConfigKey {
        ConfigKey(name: name, bound: bound) { d, node, path, target in
            guard let text = d.string(node, path) else { return }
            if let v = Double(text), range.contains(v) {
                target[keyPath: field] = v
            } else {
                d.fail(path, node, .invalidValue(text, expected: "a number in \(range.lowerBound)...\(range.upperBound)"))
            }
        }
    }
}

/// The key tables of the config sections whose keys are plain values.
enum ConfigKeys {
    static let longestDuration = MeshDuration.seconds(86_400 * 365)

    /// `≤ 1 h`, `≤ 300 s`; `duration` when only the type bounds it.
    static func durationBound(_ max: MeshDuration?) -> String {
        guard let max else { return "duration" }
        let s = max.nanoseconds / 1_000_000_000
        return s % 3600 == 0 ? "≤ \(s / 3600) h" : "≤ \(s) s"
    }

    static let http: [ConfigKey<HTTPConfig>] = [
        .int("maxHeaderBytes", 1024...(1 << 20), \.maxHeaderBytes),
        .int("maxRequestLineBytes", 256...(1 << 20), \.maxRequestLineBytes),
        .duration("headerReadTimeout", max: .seconds(3600), \.headerReadTimeout),
        .duration("idleTimeout", \.idleTimeout),
        .int("maxConnections", 1...1_000_000, \.maxConnections),
        .int("maxConnectionsPerSource", 1...1_000_000, \.maxConnectionsPerSource),
        .duration("detectTimeout", max: .seconds(3600), \.detectTimeout),
    ]

    static let http2: [ConfigKey<HTTP2Config>] = [
        .int("maxConcurrentStreams", 1...10_000, \.maxConcurrentStreams),
        // RFC 9113 §6.5.2: at least the 65 535 default, at most 2^31 - 1; meshd caps at 16 MiB.
        .int("initialWindowSize", 65_535...(16 << 20), \.initialWindowSize),
        .int("maxConnectionsPerEndpoint", 1...1024, \.maxConnectionsPerEndpoint),
        .int("maxResetStreams", 10...1_000_000, \.maxResetStreams),
        .int("maxPrematureResets", 1...1_000_000, \.maxPrematureResets),
    ]

    static let upstream: [ConfigKey<UpstreamConfig>] = [
        .duration("connectTimeout", max: .seconds(300), \.connectTimeout),
        .duration("requestTimeout", \.requestTimeout),
        .duration("idleTimeout", \.idleTimeout),
        .int("maxIdlePerEndpoint", 0...100_000, \.maxIdlePerEndpoint),
    ]

    static let serviceTimeouts: [ConfigKey<ServiceConfig>] = [
        .duration("connect", max: .seconds(300), \.connectTimeout),
        .duration("idle", \.idleTimeout),
    ]

    static let limits: [ConfigKey<CircuitBreakerLimits>] = [
        .int("maxConnections", 1...1_000_000, \.maxConnections),
        .int("maxPending", 0...1_000_000, \.maxPending),
        .int("maxRequests", 1...1_000_000, \.maxRequests),
        .int("maxRetries", 0...1_000_000, \.maxRetries),
    ]

    static let outlierDetection: [ConfigKey<OutlierDetector.Config>] = [
        .bool("enabled", \.enabled),
        .int("consecutive5xx", 0...10_000, \.consecutive5xx),
        .int("consecutiveGatewayFailures", 0...10_000, \.consecutiveGatewayFailures),
        .duration("baseEjectionTime", \.baseEjectionTime),
        .duration("maxEjectionTime", \.maxEjectionTime),
        .int("maxEjectionPercent", 0...100, \.maxEjectionPercent),
        .duration("interval", max: .seconds(3600), \.interval),
    ]

    static let retry: [ConfigKey<RetryPolicy>] = [
        ConfigKey(name: "retryOn", bound: "`connect-failure`, `refused-stream`, `reset`, `5xx`, `gateway-error`") {
            d, node, path, r in
            guard let items = d.sequence(node) else {
                d.fail(path, node, .wrongType(expected: "a list such as [connect-failure, gateway-error]"))
                return
            }
            var set = Set<RetryPolicy.Condition>()
            for (i, item) in items.enumerated() {
                guard let text = d.string(item, "\(path)[\(i)]") else { continue }
                if let c = RetryPolicy.Condition.parse(text) {
                    set.insert(c)
                } else {
                    d.fail("\(path)[\(i)]", item, .invalidValue(text, expected: retryConditions))
                }
            }
            r.retryOn = set
        },
        .int("attempts", 1...10, \.attempts),
        .duration("perTryTimeout", \.perTryTimeout),
        ConfigKey(name: "backoff", bound: nil) { d, node, path, r in
            guard d.decode(node, path, backoff, into: &r.backoff) != nil else { return }
            if r.backoff.max < r.backoff.base { d.fail(d.join(path, "max"), node, .invalid("must be at least backoff.base")) }
        },
        .section("budget", budget, \.budget),
        .duration("hedgeAfter", \.hedgeAfter),
        .bool("retryNonIdempotent", \.retryNonIdempotent),
        .int("bufferBytes", 0...(16 << 20), \.bufferBytes),
    ]

    static let retryConditions =
        "connect-failure, refused-stream, reset, 5xx, gateway-error, a status code, or a gRPC status (unavailable, cancelled, deadline-exceeded, internal, resource-exhausted)"

    static let backoff: [ConfigKey<Backoff>] = [
        .duration("base", max: .seconds(60), \.base),
        .duration("max", max: .seconds(600), \.max),
    ]

    static let budget: [ConfigKey<RetryBudget.Config>] = [
        .number("ratio", 0...100, bound: "0…100", \.ratio),
        .number("minPerSecond", 0...1_000_000, bound: "0…1000000", \.minPerSecond),
        ConfigKey(name: "window", bound: "1 s…1 h") { d, node, path, target in
            if let w = d.duration(node, path, max: .seconds(3600)), w >= .seconds(1) {
                target.window = w
            } else {
                d.fail(path, node, .invalid("window must be 1s...1h"))
            }
        },
    ]
}
