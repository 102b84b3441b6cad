import Testing

@testable import MeshCore

@Suite("Received HTTP/2 header blocks are well-formed (RFC 9113 §8.2, §8.3)")
struct HTTP2FieldCheckTests {
    typealias Problem = HTTP2FieldCheck.Problem

    /// Checks a whole block; nil when it is well-formed.
    func check(_ block: HTTP2FieldCheck.Block, _ fields: [(String, String)]) -> Problem? {
        var check = HTTP2FieldCheck(block)
        do {
            for (name, value) in fields { _ = try check.field(name: name, value: value) }
            try check.finish()
            return nil
        } catch {
            return error
        }
    }

    static let get: [(String, String)] = [(":method", "GET"), (":scheme", "https"), (":authority", "a:443"), (":path", "/x?y=1")]

    @Test func wellFormedBlocksPass() {
        #expect(check(.request, Self.get + [("te", "trailers"), ("x-a", "v a\tl\u{e9}"), ("content-type", "application/grpc")]) == nil)
        #expect(check(.request, [(":method", "GET"), (":scheme", "http"), (":path", "*")]) == nil, ":authority is optional")
        #expect(check(.request, [(":method", "CONNECT"), (":authority", "b:443")]) == nil)
        #expect(check(.response, [(":status", "200"), ("content-length", "3"), ("x-!#$%&'*+-.^_`|~09az", "")]) == nil)
        #expect(check(.response, [(":status", "103"), ("link", "</a>")]) == nil)
        #expect(check(.trailers, [("grpc-status", "0"), ("grpc-message", "")]) == nil)
        #expect(check(.trailers, []) == nil)
    }

    @Test func theFieldCheckSaysWhichPseudoHeaderItSaw() throws {
        var check = HTTP2FieldCheck(.request)
        #expect(try check.field(name: ":method", value: "GET") == .method)
        #expect(try check.field(name: ":path", value: "/") == .path)
        #expect(try check.field(name: ":authority", value: "a") == .authority)
        #expect(try check.field(name: ":scheme", value: "http") == .scheme)
        #expect(try check.field(name: "x", value: "1") == nil)
    }

    @Test func namesAreLowercaseTokens() {
        for name in ["X-Upper", "x a", "x:a", "x\u{0}", "x\r\n", "é", "x\"", "x(", "x/", "x@", "x[", "x{", "x\u{7f}", ""] {
            #expect(check(.request, Self.get + [(name, "1")]) == .invalidName(name), "\(name.debugDescription)")
        }
    }

    @Test func valuesHoldNoNULCROrLF() {
        for value in ["a\r\nx: y", "a\nb", "a\rb", "a\u{0}b"] {
            #expect(check(.request, Self.get + [("x-a", value)]) == .invalidValue(name: "x-a"), "\(value.debugDescription)")
            #expect(check(.trailers, [("x-a", value)]) == .invalidValue(name: "x-a"))
        }
    }

    @Test func pseudoHeaderValuesHoldNoSpaceOrControl() {
        for (name, value) in [
            (":path", "/a HTTP/1.1"), (":path", "/a\tb"), (":authority", "a\r\nb"), (":method", "G T"), (":path", "/\u{7f}"),
        ] {
            var block = Self.get.filter { $0.0 != name }
            block.insert((name, value), at: 0)
            #expect(check(.request, block) == .invalidValue(name: name), "\(name) \(value.debugDescription)")
        }
        #expect(check(.request, [(":method", "GET"), (":scheme", "http"), (":path", "")]) == .emptyPath)
    }

    @Test func pseudoHeadersComeFirstOnceAndOnlyWhereTheyBelong() {
        #expect(
            check(.request, [(":method", "GET"), ("x", "1"), (":path", "/"), (":scheme", "http")]) == .pseudoAfterRegularField(":path"))
        #expect(check(.request, Self.get + [(":path", "/b")]) == .repeatedPseudoHeader(":path"))
        #expect(check(.request, Self.get + [(":status", "200")]) == .unexpectedPseudoHeader(":status"))
        #expect(check(.request, Self.get + [(":protocol", "websocket")]) == .unexpectedPseudoHeader(":protocol"))
        #expect(check(.response, [(":status", "200"), (":path", "/")]) == .unexpectedPseudoHeader(":path"))
        #expect(check(.trailers, [(":status", "200")]) == .unexpectedPseudoHeader(":status"))
    }

    @Test func mandatoryPseudoHeadersArePresent() {
        #expect(check(.request, [(":scheme", "http"), (":path", "/")]) == .missingPseudoHeaders)
        #expect(check(.request, [(":method", "GET"), (":path", "/")]) == .missingPseudoHeaders)
        #expect(check(.request, [(":method", "GET"), (":scheme", "http")]) == .missingPseudoHeaders)
        #expect(check(.request, [(":method", "CONNECT")]) == .missingPseudoHeaders)
        #expect(check(.request, [(":method", "CONNECT"), (":authority", "b:1"), (":path", "/")]) == .unexpectedPseudoHeader(":path"))
        #expect(
            check(.request, [(":method", "CONNECT"), (":authority", "b:1"), (":scheme", "http")]) == .unexpectedPseudoHeader(":scheme"))
        #expect(check(.response, [("x", "1")]) == .missingPseudoHeaders)
    }

    @Test func aStatusIsThreeDigitsFrom100To599() {
        for status in ["20", "2000", "abc", "099", "600", "2 0", "+20", "２00"] {
            #expect(check(.response, [(":status", status)]) == .invalidStatus, "\(status)")
        }
    }

    @Test func connectionSpecificFieldsAreRefused() {
        for name in ["connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade"] {
            #expect(check(.request, Self.get + [(name, "x")]) == .connectionSpecificField(name))
            #expect(check(.response, [(":status", "200"), (name, "x")]) == .connectionSpecificField(name))
        }
        #expect(check(.request, Self.get + [("te", "gzip")]) == .teNotTrailers)
        #expect(check(.request, Self.get + [("te", "trailers, gzip")]) == .teNotTrailers)
        // Names that only share a length with one.
        #expect(check(.request, Self.get + [("connectiox", "x"), ("tf", "x"), ("upgradz", "x")]) == nil)
    }
}
