import Testing

@testable import MeshCore

@Suite("Absolute-form request targets")
struct RequestTargetTests {
    @Test func splitsAuthorityFromPath() throws {
        let (host, path) = try #require(RequestTarget.splitAbsoluteForm("http://orders:8080/v1/items?x=1"))
        #expect(host == "orders:8080")
        #expect(path == "/v1/items?x=1")
        #expect(RequestTarget.splitAbsoluteForm("http://orders")! == ("orders", "/"))
        #expect(RequestTarget.splitAbsoluteForm("http://orders?x=1")! == ("orders", "/?x=1"))
        #expect(RequestTarget.splitAbsoluteForm("/v1/items") == nil)
        #expect(RequestTarget.splitAbsoluteForm("orders:8080") == nil)
    }

    /// Found by the fuzzer: a combining mark after "/" or "?" forms one Character with it, so a
    /// Character comparison missed the delimiter.
    @Test func delimitersFollowedByCombiningMarks() throws {
        let (host, path) = try #require(RequestTarget.splitAbsoluteForm("http:///\u{31A}bb/w:8path?q"))
        #expect(host == "")
        #expect(path.utf8.first == UInt8(ascii: "/"))
        let (host2, path2) = try #require(RequestTarget.splitAbsoluteForm("http://orders?\u{31A}x"))
        #expect(host2 == "orders")
        #expect(Array(path2.utf8.prefix(2)) == [UInt8(ascii: "/"), UInt8(ascii: "?")])
    }
}
