import Testing

@testable import MeshCore

@Suite("Header policy and meshd errors")
struct HeaderPolicyTests {
    @Test func hopByHopIncludesConnectionTokens() {
        let names = HeaderPolicy.namesToRemove(connectionHeaderValues: ["keep-alive, X-Trace-Hop", " Foo "])
        #expect(names.isSuperset(of: ["connection", "keep-alive", "transfer-encoding", "upgrade", "te", "proxy-connection"]))
        #expect(names.contains("x-trace-hop") && names.contains("foo"))
        #expect(!names.contains("content-length"))
    }

    @Test func forwardedForAppends() {
        #expect(HeaderPolicy.appendingForwardedFor(existing: nil, client: "10.0.0.1") == "10.0.0.1")
        #expect(HeaderPolicy.appendingForwardedFor(existing: "", client: "10.0.0.1") == "10.0.0.1")
        #expect(HeaderPolicy.appendingForwardedFor(existing: "1.1.1.1", client: "10.0.0.1") == "1.1.1.1, 10.0.0.1")
    }

    @Test func errorsMapToStatuses() {
        #expect(MeshError.noRoute.status == 404)
        #expect(MeshError.connectFailed.status == 503)
        #expect(MeshError.noEndpoints.status == 503)
        #expect(MeshError.upstreamTimeout.status == 504)
        #expect(MeshError.badRequest.status == 400)
        #expect(MeshError.headersTooLarge.status == 431)
        #expect(MeshError.uriTooLong.status == 414 && MeshError.uriTooLong.reason == "URI Too Long")
        #expect(MeshError.headerTimeout.status == 408)
        #expect(MeshError.upstreamReset.status == 502)
        #expect(MeshError.sourceNotAllowed.status == 403)
        #expect(Set(MeshError.allCases.map(\.rawValue)).count == MeshError.allCases.count)
        #expect(HeaderPolicy.statusClass(204) == "2xx" && HeaderPolicy.statusClass(503) == "5xx")
    }

    @Test func asciiLowercasingMatchesFoundationOnTokens() {
        // Every byte a field name (an RFC 9110 token) may hold, in every case, small and large strings.
        let token = Array("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ".utf8)
        var rng = SplitMix64(seed: 7)
        for _ in 0..<2000 {
            let count = Int.random(in: 0...40, using: &rng)
            let name = String(decoding: (0..<count).map { _ in token.randomElement(using: &rng)! }, as: UTF8.self)
            #expect(HeaderPolicy.asciiLowercased(name) == name.lowercased())
        }
        // Only A–Z change: the bytes next to them (`@`, `[`, `` ` ``, `{`) and non-ASCII stay.
        #expect(HeaderPolicy.asciiLowercased("@AZ[`az{") == "@az[`az{")
        #expect(HeaderPolicy.asciiLowercased("X-Ä") == "x-Ä")
    }

    @Test func caseInsensitiveEqualityOnlyFoldsASCIILetters() {
        #expect(HeaderPolicy.equalsIgnoringASCIICase("Content-Length", "content-length"))
        #expect(
            HeaderPolicy.equalsIgnoringASCIICase(
                "X-A-VERY-LONG-HEADER-NAME-PAST-SMALL-STRINGS", "x-a-very-long-header-name-past-small-strings"))
        #expect(HeaderPolicy.equalsIgnoringASCIICase(Substring("xTE"), "xte"))
        #expect(HeaderPolicy.equalsIgnoringASCIICase("TE"[...], "te"))
        #expect(!HeaderPolicy.equalsIgnoringASCIICase("te", "tex"))
        #expect(!HeaderPolicy.equalsIgnoringASCIICase("tf", "te"))
        // Only A-Z fold: '@' (0x40) and '[' (0x5B) are not letters; 'É' is not ASCII.
        #expect(!HeaderPolicy.equalsIgnoringASCIICase("@", "`"))
        #expect(!HeaderPolicy.equalsIgnoringASCIICase("[", "{"))
        #expect(!HeaderPolicy.equalsIgnoringASCIICase("É", "é"))
        #expect(HeaderPolicy.equalsIgnoringASCIICase("", ""))
    }

    @Test func listItemsAreTrimmedAndEmptyOnesSkipped() {
        func items(_ v: String) -> [String] {
            var out: [String] = []
            HeaderPolicy.forEachListItem(v) { out.append(String($0)) }
            return out
        }
        #expect(items("keep-alive") == ["keep-alive"])
        #expect(items(" gzip ,\tchunked ") == ["gzip", "chunked"])
        #expect(items(",, a,,b ,") == ["a", "b"])
        #expect(items("") == [] && items(" , ") == [])
        #expect(items("é, x") == ["é", "x"])
        #expect(HeaderPolicy.listContains("gzip, Chunked", token: "chunked"))
        #expect(HeaderPolicy.listContains("Upgrade", token: "upgrade"))
        #expect(!HeaderPolicy.listContains("chunkedx, gzip", token: "chunked"))
        #expect(!HeaderPolicy.listContains("", token: "chunked"))
    }
}
