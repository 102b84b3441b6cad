import Testing

@testable import MeshCore

@Suite("Protocol detection")
struct ProtocolDetectionTests {
    func classify(_ s: String) -> DetectedProtocol? { ProtocolDetection.classify(Array(s.utf8)) }

    @Test func http1RequestLines() {
        #expect(classify("GET / HTTP/1.1\r\nHost: x\r\n\r\n") == .http1)
        #expect(classify("POST /api HTTP/1.0\r\n") == .http1)
        #expect(classify("CONNECT db:5432 HTTP/1.1\r\n") == .http1)
        #expect(classify("GET http://orders/x HTTP/1.1\n") == .http1)
    }

    @Test func needsMoreBytesUntilItCanTell() {
        #expect(classify("") == nil)
        #expect(classify("GE") == nil)
        #expect(classify("GET /slow-start") == nil)
        #expect(classify("PRI * HTTP/2.0\r\n") == nil)
        #expect(classify("\u{16}\u{03}") == nil)
    }

    @Test func http2PrefaceAndTLS() {
        #expect(classify("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n") == .http2)
        #expect(ProtocolDetection.classify([0x16, 0x03, 0x01, 0x02, 0x00]) == .tls)
    }

    @Test func http09RequestLinesAreToldApart() {
        #expect(classify("GET /\r\n") == .http09)
        #expect(classify("GET /index.html\n") == .http09)
        #expect(classify("GET \r\n") == .opaque)
    }

    @Test func everythingElseIsOpaque() {
        #expect(classify("GARBAGE\r\n") == .opaque)
        #expect(classify("GETX / HTTP/1.1\r\n") == .opaque)
        #expect(classify("GET / SPDY/3\r\n") == .opaque)
        #expect(ProtocolDetection.classify([0x00, 0x00, 0x00, 0x08, 0x04, 0xd2, 0x16, 0x2f]) == .opaque)  // PostgreSQL SSLRequest
        #expect(classify("SSH-2.0-OpenSSH_9.2\r\n") == .opaque)
        // A request line that never ends within the limit is not HTTP.
        #expect(classify("GET /" + String(repeating: "a", count: 2000)) == .opaque)
    }
}
