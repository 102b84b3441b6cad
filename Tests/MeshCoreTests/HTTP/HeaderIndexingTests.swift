import Testing

@testable import MeshCore

@Suite("HPACK indexing of the headers meshd sends")
struct HeaderIndexingTests {
    @Test func perRequestValuesAreNotIndexed() {
        for name in [
            ":path", "age", "content-length", "etag", "if-modified-since", "if-none-match", "location", "set-cookie",
            "x-request-id", "traceparent", "tracestate", "b3", "x-b3-traceid", "x-b3-spanid", "x-b3-parentspanid",
            "grpc-timeout",
        ] {
            #expect(HeaderIndexing.of(name: name, valueLength: 10) == .noIndex, "\(name)")
        }
    }

    @Test func credentialsAreNeverIndexed() {
        #expect(HeaderIndexing.of(name: "authorization", valueLength: 40) == .neverIndex)
        #expect(HeaderIndexing.of(name: "cookie", valueLength: 19) == .neverIndex)
        // A long cookie is hard to guess by compression side channels and usually repeats: indexed.
        #expect(HeaderIndexing.of(name: "cookie", valueLength: 20) == .index)
    }

    @Test func stableHeadersAreIndexed() {
        for name in [
            ":method", ":scheme", ":authority", ":status", "user-agent", "accept", "content-type", "te", "server",
            "date", "x-forwarded-for", "grpc-status", "x-forwarded-client-cert", "x-meshd-dst",
        ] {
            #expect(HeaderIndexing.of(name: name, valueLength: 10) == .index, "\(name)")
        }
    }

    @Test func entriesTooLargeForTheTableAreNotIndexed() {
        // 32 + 10 + 3030 = 3072 = 3/4 of 4096: still indexed; one byte more is not.
        #expect(HeaderIndexing.of(name: "user-agent", valueLength: 3030) == .index)
        #expect(HeaderIndexing.of(name: "user-agent", valueLength: 3031) == .noIndex)
        #expect(HeaderIndexing.of(name: "user-agent", valueLength: 100, tableSize: 128) == .noIndex)
    }

    @Test func primingIndexesPerRequestHeadersTheStaticTableDoesNotName() {
        for name in [
            "x-request-id", "traceparent", "tracestate", "b3", "x-b3-traceid", "x-b3-spanid", "x-b3-parentspanid", "grpc-timeout",
        ] {
            #expect(HeaderIndexing.of(name: name, valueLength: 36, primeNames: true) == .index, "\(name)")
        }
        // The static table has these names: a header without indexing names them there already.
        for name in [":path", "age", "content-length", "etag", "if-modified-since", "if-none-match", "location", "set-cookie"] {
            #expect(HeaderIndexing.of(name: name, valueLength: 10, primeNames: true) == .noIndex, "\(name)")
        }
        #expect(HeaderIndexing.of(name: "authorization", valueLength: 40, primeNames: true) == .neverIndex)
        // Too large for the table whatever the priming.
        #expect(HeaderIndexing.of(name: "traceparent", valueLength: 3100, primeNames: true) == .noIndex)
    }

    @Test func primingComesOnTheFirstRequestAndEveryIntervalAfter() {
        var priming = HeaderNamePriming()
        let primed = (0..<(2 * HeaderNamePriming.interval + 1)).filter { _ in priming.next() }
        #expect(primed == [0, HeaderNamePriming.interval, 2 * HeaderNamePriming.interval])
    }

    @Test func namesCompareWithoutCase() {
        #expect(HeaderIndexing.of(name: "X-Request-Id", valueLength: 36) == .noIndex)
        #expect(HeaderIndexing.of(name: "Authorization", valueLength: 36) == .neverIndex)
    }
}
