import Atomics
import Logging
import MeshCore
import NIOCore
import NIOEmbedded
import NIOHTTP1
import Testing

@testable import MeshProxy

/// The downstream handler's local decisions, driven through a real NIO HTTP pipeline on an
/// EmbeddedChannel (no sockets): routing misses, malformed input, limits and timeouts.
@Suite("HTTPProxyHandler local replies")
struct HTTPProxyHandlerTests {
    static let config = """
        services: [ { name: web, endpoints: ["127.0.0.1:9"] }, { name: empty, endpoints: [] } ]
        routes:
          - { match: { authority: web }, service: web }
          - { match: { authority: empty }, service: empty }
        http: { maxHeaderBytes: 1024, headerReadTimeout: 2s, idleTimeout: 30s }
        """

    @Test func noRouteIs404NamingTheAuthorityAndKeepsTheConnection() throws {
        let h = try ProxyHarness(yaml: Self.config)
        try h.send("GET /x HTTP/1.1\r\nHost: payments:8080\r\n\r\n")
        let r = try h.response()
        #expect(r.hasPrefix("HTTP/1.1 404 Not Found\r\n"))
        #expect(r.contains("x-meshd-error: no-route\r\n"))
        #expect(r.contains("no route for authority 'payments'"))
        #expect(!r.contains("connection: close"))
        #expect(h.channel.isActive)
        #expect(h.errorCount(.noRoute) == 1)
        // The connection serves the next request.
        try h.send("GET / HTTP/1.1\r\nHost: empty\r\n\r\n")
        let r2 = try h.response()
        #expect(r2.hasPrefix("HTTP/1.1 503 Service Unavailable\r\n"))
        #expect(r2.contains("x-meshd-error: no-endpoints"))
    }

    @Test func pipelinedRequestsAreAnsweredInOrder() throws {
        let h = try ProxyHarness(yaml: Self.config)
        try h.send(
            "GET /1 HTTP/1.1\r\nHost: first\r\n\r\nGET /2 HTTP/1.1\r\nHost: empty\r\n\r\nGET /3 HTTP/1.1\r\nHost: third\r\n\r\n")
        let r = try h.response()
        let first = r.range(of: "no route for authority 'first'")
        let second = r.range(of: "x-meshd-error: no-endpoints")
        let third = r.range(of: "no route for authority 'third'")
        #expect(first != nil && second != nil && third != nil, "\(r)")
        if let first, let second, let third {
            #expect(first.lowerBound < second.lowerBound && second.lowerBound < third.lowerBound)
        }
        #expect(h.channel.isActive)
    }

    @Test func quiescingClosesAnIdleConnectionAfterItsGrace() throws {
        let h = try ProxyHarness(yaml: Self.config)
        h.channel.pipeline.fireUserInboundEventTriggered(ChannelShouldQuiesceEvent())
        // Not at once: a request may already be on the wire.
        h.channel.embeddedEventLoop.advanceTime(by: .milliseconds(999))
        #expect(h.channel.isActive)
        h.channel.embeddedEventLoop.advanceTime(by: .milliseconds(1))
        #expect(!h.channel.isActive)
    }

    @Test func quiescingAnswersTheNextRequestWithConnectionClose() throws {
        let h = try ProxyHarness(yaml: Self.config)
        h.channel.pipeline.fireUserInboundEventTriggered(ChannelShouldQuiesceEvent())
        try h.send("GET / HTTP/1.1\r\nHost: nowhere\r\n\r\n")
        let r = try h.response()
        #expect(r.lowercased().contains("connection: close"), "\(r)")
        #expect(!h.channel.isActive)
    }

    @Test func absoluteFormAuthorityIsUsedForRouting() throws {
        let h = try ProxyHarness(yaml: Self.config)
        try h.send("GET http://payments:9999/x HTTP/1.1\r\nHost: web\r\n\r\n")
        #expect(try h.response().contains("no route for authority 'payments'"))
    }

    @Test func missingHostIs400() throws {
        let h = try ProxyHarness(yaml: Self.config)
        try h.send("GET / HTTP/1.0\r\n\r\n")
        let r = try h.response()
        #expect(r.hasPrefix("HTTP/1.1 400 Bad Request\r\n"))
        #expect(r.contains("x-meshd-error: bad-request"))
    }

    @Test func malformedRequestIs400AndCloses() throws {
        let h = try ProxyHarness(yaml: Self.config)
        try? h.send("GARBAGE\r\n\r\n")
        let r = try h.response()
        #expect(r.hasPrefix("HTTP/1.1 400 Bad Request\r\n"))
        #expect(r.contains("x-meshd-error: bad-request"))
        #expect(!h.channel.isActive)
        #expect(h.errorCount(.badRequest) == 1)
    }

    @Test func oversizedHeadIs431() throws {
        let h = try ProxyHarness(yaml: Self.config)
        let big = String(repeating: "a", count: 2000)
        try? h.send("GET / HTTP/1.1\r\nHost: web\r\nX-Big: \(big)\r\n\r\n")
        let r = try h.response()
        #expect(r.hasPrefix("HTTP/1.1 431 Request Header Fields Too Large\r\n"))
        #expect(r.contains("x-meshd-error: headers-too-large"))
        #expect(!h.channel.isActive)
        #expect(h.errorCount(.headersTooLarge) == 1)
    }

    @Test func longRequestLineIs414AndKeepsTheConnection() throws {
        let h = try ProxyHarness(
            yaml: Self.config.replacingOccurrences(of: "maxHeaderBytes: 1024", with: "maxHeaderBytes: 4096, maxRequestLineBytes: 300"))
        let path = "/" + String(repeating: "p", count: 300)
        try h.send("GET \(path) HTTP/1.1\r\nHost: web\r\n\r\n")
        let r = try h.response()
        #expect(r.hasPrefix("HTTP/1.1 414 URI Too Long\r\n"))
        #expect(r.contains("x-meshd-error: uri-too-long"))
        #expect(h.channel.isActive)
        #expect(h.errorCount(.uriTooLong) == 1)
    }

    @Test func halfSentHeadGets408AfterTheHeaderReadTimeout() throws {
        let h = try ProxyHarness(yaml: Self.config)
        try h.send("GET / HTTP/1.1\r\nHost: web\r\n")
        h.advance(.seconds(1))
        #expect(h.channel.isActive)
        h.advance(.seconds(2) + .milliseconds(1))
        let r = try h.response()
        #expect(r.hasPrefix("HTTP/1.1 408 Request Timeout\r\n"))
        #expect(r.contains("x-meshd-error: header-timeout"))
        #expect(!h.channel.isActive)
        #expect(h.errorCount(.headerTimeout) == 1)
    }

    @Test func silentNewConnectionIsClosedAfterTheHeaderReadTimeout() throws {
        let h = try ProxyHarness(yaml: Self.config)
        h.advance(.seconds(2))
        #expect(h.channel.isActive)
        h.advance(.milliseconds(1))
        #expect(!h.channel.isActive)
        #expect(try h.response().isEmpty)
    }

    @Test func idleKeepAliveUsesTheIdleTimeoutNotTheHeaderTimeout() throws {
        let h = try ProxyHarness(yaml: Self.config)
        try h.send("GET / HTTP/1.1\r\nHost: nowhere\r\n\r\n")
        _ = try h.response()
        h.advance(.seconds(5))
        #expect(h.channel.isActive)
        h.advance(.seconds(26))
        #expect(!h.channel.isActive)
        #expect(h.errorCount(.headerTimeout) == 0)
    }

    @Test func nodeInboundRefusesDestinationsOutsideThePodCIDRs() throws {
        let yaml = "mode: node\nnodeIP: 127.0.0.2\nnode: { podCIDRs: [10.42.0.0/24] }\n"
        let h = try ProxyHarness(yaml: yaml, direction: .inbound)
        try h.send("GET / HTTP/1.1\r\nHost: web\r\nx-meshd-dst: 10.43.0.5:8080\r\n\r\n")
        let r = try h.response()
        #expect(r.hasPrefix("HTTP/1.1 403 Forbidden\r\n"))
        #expect(r.contains("x-meshd-error: destination-not-allowed"))
        try h.send("GET / HTTP/1.1\r\nHost: web\r\n\r\n")
        #expect(try h.response().contains("destination-not-allowed"))
        #expect(h.errorCount(.destinationNotAllowed, .inbound) == 2)
    }
}
