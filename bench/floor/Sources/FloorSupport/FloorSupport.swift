// What both harnesses share: their command line and the request id meshd adds.

import NIOCore

#if canImport(Glibc)
    import Glibc
#endif

/// `TOOL DESIGN LISTEN_PORT UPSTREAM_IP UPSTREAM_PORT`, DESIGN one of `designs`; anything else prints
/// the usage and exits with status 2.
public func floorArguments(tool: String, designs: [String]) -> (design: String, listenPort: Int, upstream: SocketAddress) {
    let arguments = CommandLine.arguments
    if arguments.count == 5, designs.contains(arguments[1]), let listenPort = Int(arguments[2]),
        let upstreamPort = Int(arguments[4]),
        let upstream = try? SocketAddress(ipAddress: arguments[3], port: upstreamPort)
    {
        return (arguments[1], listenPort, upstream)
    }
    print("usage: \(tool) \(designs.joined(separator: "|")) LISTEN_PORT UPSTREAM_IP UPSTREAM_PORT")
    exit(2)
}

/// A 36-character request id (UUID-shaped) from a per-loop generator: the per-request header meshd
/// adds when the client sent none.
public struct RequestIDs {
    var rng = SystemRandomNumberGenerator()
    static let hex = Array("0123456789abcdef".utf8)

    public init() {}

    public mutating func next() -> String {
        let a = rng.next() as UInt64
        let b = rng.next() as UInt64
        return String(unsafeUninitializedCapacity: 36) { out in
            var i = 0
            for word in [a, b] {
                for k in 0..<16 {
                    if i == 8 || i == 13 || i == 18 || i == 23 {
                        out[i] = UInt8(ascii: "-")
                        i += 1
                    }
                    out[i] = Self.hex[Int((word >> UInt64(60 - 4 * k)) & 0xF)]
                    i += 1
                }
            }
            return i
        }
    }
}
