import Testing

@testable import MeshCore

@Suite("Tap filters")
struct TapFilterTests {
    static func event(_ status: Int, service: String? = "web", route: String? = "r", direction: String = "outbound") -> TapEvent {
        TapEvent(direction: direction, service: service, route: route, status: status, line: "{}")
    }

    @Test func noFilterMatchesEverything() throws {
        let f = try TapFilter(query: "")
        #expect(f.max == TapFilter.defaultMax)
        #expect(f.matches(Self.event(200)) && f.matches(Self.event(503, service: nil, route: nil, direction: "inbound")))
    }

    @Test func filtersCombine() throws {
        let f = try TapFilter(query: "service=web&route=api%2Dv1&status=5xx&direction=outbound&max=3")
        #expect(f.route == "api-v1" && f.max == 3)
        #expect(f.matches(Self.event(503, route: "api-v1")))
        #expect(!f.matches(Self.event(404, route: "api-v1")))
        #expect(!f.matches(Self.event(503, route: "other")))
        #expect(!f.matches(Self.event(503, service: "db", route: "api-v1")))
        #expect(!f.matches(Self.event(503, route: "api-v1", direction: "inbound")))
        let exact = try TapFilter(query: "status=404")
        #expect(exact.matches(Self.event(404)) && !exact.matches(Self.event(403)))
    }

    @Test func badQueriesAreRefused() {
        for q in ["status=9xx", "status=42", "max=0", "max=100001", "direction=up", "colour=red", "max=x"] {
            #expect(throws: TapError.self, "\(q)") { try TapFilter(query: Substring(q)) }
        }
    }
}
