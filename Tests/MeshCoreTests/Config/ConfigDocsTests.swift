import Foundation
import Testing

@testable import MeshCore

@Suite("docs/configuration.md documents every key")
struct ConfigDocsTests {
    static let docs: [Substring] = {
        let url = URL(fileURLWithPath: #filePath)
            .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("docs/configuration.md")
        let text = (try? String(contentsOf: url, encoding: .utf8)) ?? ""
        return text.split(separator: "\n").filter { $0.hasPrefix("| `") }
    }()

    /// | key | default | bound | meaning |
    static func cells(_ row: Substring) -> [String] {
        row.split(separator: "|", omittingEmptySubsequences: false).map { $0.trimmingCharacters(in: .whitespaces) }
    }

    @Test func everyKeyHasARowWithItsBound() {
        #expect(!Self.docs.isEmpty)
        #expect(ConfigKeys.documented.count >= 88)  // every section is listed
        for (path, bound) in ConfigKeys.documented {
            let rows = Self.docs.filter { Self.cells($0)[1].contains("`\(path)`") }
            #expect(rows.count == 1, "docs/configuration.md: one table row for `\(path)`, found \(rows.count)")
            guard let row = rows.first else { continue }
            let cells = Self.cells(row)
            #expect(cells.count > 3 && cells[3].contains(bound), "`\(path)`: bound \(bound) in docs row: \(row)")
        }
    }

    @Test func everyTabledKeyIsAccepted() throws {
        // The decoder takes the allowed keys from the same tables: a documented key is never unknown.
        let yaml = """
            http: {maxHeaderBytes: 2048, headerReadTimeout: 5s, idleTimeout: 30s, maxConnections: 10, detectTimeout: 5s}
            http2: {maxConcurrentStreams: 10, initialWindowSize: 65535, maxConnectionsPerEndpoint: 2, maxResetStreams: 100, maxPrematureResets: 10}
            upstream: {connectTimeout: 1s, requestTimeout: 2s, idleTimeout: 3s, maxIdlePerEndpoint: 4}
            services:
              - name: s
                endpoints: ["127.0.0.1:1"]
                timeouts: {connect: 1s, idle: 2s}
                limits: {maxConnections: 1, maxPending: 2, maxRequests: 3, maxRetries: 4}
                outlierDetection: {enabled: true, consecutive5xx: 1, consecutiveGatewayFailures: 2, baseEjectionTime: 1s, maxEjectionTime: 2s, maxEjectionPercent: 50, interval: 1s}
            routes:
              - service: s
                retry: {attempts: 2, perTryTimeout: 1s, hedgeAfter: 1s, retryNonIdempotent: true, bufferBytes: 10, backoff: {base: 1ms, max: 2ms}, budget: {ratio: 0.5, minPerSecond: 1, window: 2s}}
            """
        let config = try ConfigLoader.load(yaml: yaml)
        #expect(config.http.maxHeaderBytes == 2048 && config.http2.maxPrematureResets == 10)
        #expect(config.upstream.maxIdlePerEndpoint == 4)
        #expect(config.services[0].limits.maxRetries == 4 && config.services[0].idleTimeout == .seconds(2))
        #expect(config.services[0].outlierDetection.maxEjectionPercent == 50)
        let retry = try #require(config.routes[0].retry)
        #expect(retry.attempts == 2 && retry.bufferBytes == 10 && retry.retryNonIdempotent)
        #expect(retry.backoff.max == .milliseconds(2) && retry.budget.window == .seconds(2) && retry.budget.ratio == 0.5)
    }
}
