import MeshCore
import NIOCore
import Testing

@testable import MeshProxy

@Suite("Socket addresses from parsed IP literals")
struct SocketAddressTests {
    /// Built from the numbers, the address is the one NIO makes from the text.
    @Test func sameAsNIOsParser() throws {
        for (text, port) in [("10.42.1.7", 8080), ("127.0.0.1", 1), ("255.255.255.255", 65535), ("fd00:42::7", 80), ("::1", 443)] {
            let ip = try #require(IPAddress(text))
            let built = SocketAddress(ip, port: port)
            let parsed = try SocketAddress(ipAddress: text, port: port)
            #expect(built == parsed, "\(text)")
            #expect(built.port == port && built.ipAddress == parsed.ipAddress, "\(text)")
        }
    }
}
