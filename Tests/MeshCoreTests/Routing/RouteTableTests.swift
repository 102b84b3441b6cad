import Testing

@testable import MeshCore

@Suite("Route matching and weighted splits")
struct RouteTableTests {
    func table(_ yaml: String) throws -> MeshSnapshot {
        MeshSnapshot(config: try ConfigLoader.load(yaml: yaml), version: 1)
    }

    static let yaml = """
        services:
          - { name: a, endpoints: ["10.0.0.1:80"] }
          - { name: b, endpoints: ["10.0.0.2:80"] }
          - { name: c, endpoints: ["10.0.0.3:80"] }
          - { name: d, endpoints: ["10.0.0.4:80"] }
        routes:
          - name: canary
            match: { authority: orders, headers: { x-canary: "1" } }
            service: b
          - name: writes
            match: { authority: orders, method: POST, pathPrefix: /api }
            service: c
          - name: orders
            match: { authority: orders }
            service: a
          - name: wild
            match: { authority: "*.example.com" }
            service: d
        """

    func match(_ s: MeshSnapshot, host: String, path: String = "/", method: String = "GET", headers: [String: String] = [:])
        -> String?
    {
        s.routes.match(
            host: RouteTable.hostWithoutPort(Substring(host)), path: Substring(path), method: method,
            header: { headers[$0] })?.name
    }

    @Test func firstMatchWinsWithEveryMatcher() throws {
        let s = try table(Self.yaml)
        #expect(match(s, host: "orders") == "orders")
        #expect(match(s, host: "ORDERS:8080") == "orders")
        #expect(match(s, host: "orders", headers: ["x-canary": "1"]) == "canary")
        #expect(match(s, host: "orders", headers: ["x-canary": "0"]) == "orders")
        #expect(match(s, host: "orders", path: "/api/v1", method: "POST") == "writes")
        #expect(match(s, host: "orders", path: "/web", method: "POST") == "orders")
        #expect(match(s, host: "shop.example.com") == "wild")
        #expect(match(s, host: "example.com") == nil)
        #expect(match(s, host: "payments") == nil)
    }

    @Test func indexedRoutesKeepConfigurationOrderAcrossExactWildcardAndAny() throws {
        let s = try table(
            """
            services: [ { name: a, endpoints: [] } ]
            routes:
              - { name: api-get, match: { authority: api.example.com, method: GET }, service: a }
              - { name: deep-wild, match: { authority: "*.eu.example.com" }, service: a }
              - { name: wild, match: { authority: "*.example.com", pathPrefix: /w }, service: a }
              - { name: api, match: { authority: API.Example.com }, service: a }
              - { name: catch-v2, match: { pathPrefix: /v2 }, service: a }
              - { name: wild-all, match: { authority: "*.example.com" }, service: a }
              - { name: ip, match: { authority: "[::1]:8080" }, service: a }
              - { name: any, match: { }, service: a }
            """)
        #expect(match(s, host: "api.example.com") == "api-get")
        #expect(match(s, host: "API.EXAMPLE.COM:443", method: "POST") == "api")
        #expect(match(s, host: "api.example.com", path: "/w", method: "POST") == "wild")
        #expect(match(s, host: "x.eu.example.com", path: "/w") == "deep-wild")
        #expect(match(s, host: "a.b.c.example.com", path: "/v2") == "catch-v2")
        #expect(match(s, host: "a.b.c.example.com") == "wild-all")
        #expect(match(s, host: "eu.example.com") == "wild-all")
        #expect(match(s, host: "example.com") == "any")
        #expect(match(s, host: ".example.com") == "any")
        #expect(match(s, host: "[::1]:80") == "ip")
        #expect(match(s, host: "") == "any")
        // Thousands of labels: one pass over the host.
        #expect(match(s, host: String(repeating: "a.", count: 4000) + "example.com") == "wild-all")
        #expect(match(s, host: String(repeating: ".", count: 8000)) == "any")
    }

    /// The index against the definition (the first route, in order, whose matchers all hold), over
    /// seeded random tables and requests.
    @Test func indexedMatchAgreesWithALinearScan() throws {
        var rng = SplitMix64(seed: 11)
        let hosts = ["a", "b.a", "c.b.a", "A", "B.A", "x.y", "y", "orders", "ORDERS", "o.orders", ".a", "a."]
        let authorities = ["a", "b.a", "*.a", "*.b.a", "*.y", "orders", "*", "", "*.orders", "Y", "*.A"]
        for _ in 0..<200 {
            var yaml = "services: [ { name: s, endpoints: [] } ]\nroutes:\n"
            let count = Int.random(in: 1...12, using: &rng)
            for i in 0..<count {
                var match: [String] = []
                let authority = authorities[Int.random(in: 0..<authorities.count, using: &rng)]
                if !authority.isEmpty { match.append("authority: \"\(authority)\"") }
                if Bool.random(using: &rng) && Bool.random(using: &rng) { match.append("pathPrefix: /p") }
                if Bool.random(using: &rng) && Bool.random(using: &rng) { match.append("method: POST") }
                yaml += "  - { name: r\(i), match: { \(match.joined(separator: ", ")) }, service: s }\n"
            }
            let s = try table(yaml)
            for host in hosts {
                for (path, method) in [("/", "GET"), ("/p/1", "POST"), ("/p", "GET")] {
                    let expected = s.routes.routes.first {
                        $0.matches(host: Substring(host), path: Substring(path), method: method, header: { _ in nil })
                    }
                    #expect(match(s, host: host, path: path, method: method) == expected?.name, "\(yaml) \(host) \(method) \(path)")
                }
            }
        }
    }

    @Test func hostWithoutPort() {
        #expect(RouteTable.hostWithoutPort("orders:8080") == "orders")
        #expect(RouteTable.hostWithoutPort("orders") == "orders")
        #expect(RouteTable.hostWithoutPort("[::1]:80") == "::1")
        #expect(RouteTable.hostWithoutPort("[::1]") == "::1")
        #expect(RouteTable.hostWithoutPort("[::1") == "[::1")  // unclosed: left as it is
        #expect(RouteTable.hostWithoutPort("::1") == "::1")  // unbracketed IPv6: no port to cut
        #expect(RouteTable.hostWithoutPort("orders:") == "orders")
        #expect(RouteTable.hostWithoutPort("") == "")
        #expect(RouteTable.hostWithoutPort("bücher.example:443") == "bücher.example")
        // A slice of a longer string: the cut is relative to the slice.
        let authority = "http://orders.ns:8080/x".dropFirst(7).prefix(14)
        #expect(RouteTable.hostWithoutPort(authority) == "orders.ns")
    }

    @Test func weightedSplitFollowsWeights() throws {
        let s = try table(
            """
            services: [ { name: a, endpoints: [] }, { name: b, endpoints: [] }, { name: z, endpoints: [] } ]
            routes:
              - match: { authority: x }
                backends: [ { service: a, weight: 80 }, { service: b, weight: 20 }, { service: z, weight: 0 } ]
            """)
        let route = s.routes.routes[0]
        var rng = SplitMix64(seed: 42)
        var counts = [0, 0, 0]
        let n = 100_000
        for _ in 0..<n { counts[RouteTable.pickBackend(route, using: &rng)!] += 1 }
        // Binomial σ = sqrt(n·0.8·0.2) ≈ 126: ±1 % is about 8σ.
        #expect(abs(Double(counts[0]) / Double(n) - 0.8) < 0.01)
        #expect(abs(Double(counts[1]) / Double(n) - 0.2) < 0.01)
        #expect(counts[2] == 0)
    }

    @Test func seededSplitsAreRepeatable() throws {
        let s = try table(
            """
            services: [ { name: a, endpoints: [] }, { name: b, endpoints: [] } ]
            routes: [ { match: { authority: x }, backends: [ { service: a, weight: 1 }, { service: b, weight: 1 } ] } ]
            """)
        var r1 = SplitMix64(seed: 7)
        var r2 = SplitMix64(seed: 7)
        let a = (0..<100).map { _ in RouteTable.pickBackend(s.routes.routes[0], using: &r1)! }
        let b = (0..<100).map { _ in RouteTable.pickBackend(s.routes.routes[0], using: &r2)! }
        #expect(a == b)
    }

    @Test func routeTimeoutDefaultsToUpstreamRequestTimeout() throws {
        let s = try table(
            """
            upstream: { requestTimeout: 7s }
            services: [ { name: a, endpoints: [] } ]
            routes: [ { match: { authority: x }, service: a }, { match: { authority: y }, service: a, timeout: 1s } ]
            """)
        #expect(s.routes.routes[0].timeout == .seconds(7))
        #expect(s.routes.routes[1].timeout == .seconds(1))
    }
}
