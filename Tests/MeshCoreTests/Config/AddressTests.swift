import Testing

@testable import MeshCore

@Suite("Addresses and CIDRs")
struct AddressTests {
    @Test func hostPorts() throws {
        #expect(try HostPort.parse("10.0.0.7:4143").get() == HostPort(host: "10.0.0.7", port: 4143))
        #expect(try HostPort.parse("[::1]:80").get() == HostPort(host: "::1", port: 80))
        #expect(try HostPort.parse("orders.default.svc:8080").get().host == "orders.default.svc")
        #expect(try HostPort.parse("127.0.0.1:0", allowPortZero: true).get().port == 0)
        #expect((try? HostPort.parse("127.0.0.1:0").get()) == nil)
        #expect((try? HostPort.parse("::1:80").get()) == nil)
        #expect((try? HostPort.parse(":80").get()) == nil)
        #expect((try? HostPort.parse("host").get()) == nil)
        #expect(HostPort(host: "::1", port: 80).description == "[::1]:80")
        #expect(HostPort(host: "127.0.0.2", port: 1).isLoopback)
    }

    /// The per-request parser of `x-meshd-dst` against the two general ones it stands for
    /// (`HostPort.parse`, then `IPAddress(_:)` on the host), over literals, near misses and seeded
    /// random strings of the characters that matter.
    @Test func endpointParserAgreesWithTheGeneralParsers() {
        func general(_ s: String) -> (IPAddress, Int)? {
            guard case .success(let hp) = HostPort.parse(s), let ip = IPAddress(hp.host) else { return nil }
            return (ip, hp.port)
        }
        func same(_ s: String) -> Bool {
            let a = IPAddress.parseEndpoint(s)
            let b = general(s)
            return a?.0 == b?.0 && a?.1 == b?.1
        }
        let cases = [
            "10.0.0.7:4143", "10.0.0.7:0", "10.0.0.7:65535", "10.0.0.7:65536", "10.0.0.7:080", "10.0.0.7:",
            ":80", "10.0.0.7", "10.0.0:80", "10.0.0.7.1:80", "256.0.0.1:80", "1.2.3.0255:80", "01.002.3.4:80",
            " 10.0.0.7:80\t", "10.0.0.7 :80", "10..0.7:80", ".10.0.7:80", "10.0.0.7.:80", "a.b.c.d:80",
            "[::1]:80", "[::1]", "[::1]:", "::1:80", "[fd00::7]:8080", "[::ffff:10.0.0.1]:80", "[10.0.0.1]:80",
            "[]:80", "[:80", "]:80", "[::1]x:80", "localhost:80", "", ":", "10.0.0.7:8a", "10.0.0.7:123456",
        ]
        for s in cases { #expect(same(s), "\(s)") }
        var rng = SplitMix64(seed: 5)
        let alphabet = Array("0123456789.:[]af ")
        for _ in 0..<20_000 {
            let s = String((0..<Int.random(in: 0...14, using: &rng)).map { _ in alphabet[Int.random(in: 0..<alphabet.count, using: &rng)] })
            #expect(same(s), "\(s)")
        }
        #expect(IPAddress.parseEndpoint("10.0.0.7:4143")! == (.v4(0x0A00_0007), 4143))
    }

    @Test func ipAddresses() {
        #expect(IPAddress("10.1.2.3") == .v4(0x0A01_0203))
        #expect(IPAddress("256.1.1.1") == nil)
        #expect(IPAddress("1.2.3") == nil)
        #expect(IPAddress("::1") == .v6(0, 1))
        #expect(IPAddress("fd00::1") == .v6(0xfd00_0000_0000_0000, 1))
        #expect(IPAddress("::ffff:10.0.0.1") == .v4(0x0A00_0001))
        #expect(IPAddress("1:2:3:4:5:6:7:8") != nil)
        #expect(IPAddress("1:2:3:4:5:6:7:8:9") == nil)
        #expect(IPAddress("1::2::3") == nil)
        #expect(IPAddress("10.1.2.3")!.description == "10.1.2.3")
    }

    @Test func cidrs() {
        let net = CIDR("10.42.0.0/16")!
        #expect(net.contains(IPAddress("10.42.255.1")!))
        #expect(!net.contains(IPAddress("10.43.0.1")!))
        #expect(!net.contains(IPAddress("fd00::1")!))
        #expect(CIDR("0.0.0.0/0")!.contains(IPAddress("8.8.8.8")!))
        #expect(CIDR("10.0.0.5")!.contains(IPAddress("10.0.0.5")!))
        #expect(!CIDR("10.0.0.5")!.contains(IPAddress("10.0.0.6")!))
        let v6 = CIDR("fd00:1::/32")!
        #expect(v6.contains(IPAddress("fd00:1:ffff::9")!))
        #expect(!v6.contains(IPAddress("fd00:2::9")!))
        let v6long = CIDR("fd00::/120")!
        #expect(v6long.contains(IPAddress("fd00::ff")!))
        #expect(!v6long.contains(IPAddress("fd00::100")!))
        #expect(CIDR("::/0")!.contains(IPAddress("::1")!))
        #expect(CIDR("10.0.0.0/33") == nil)
        #expect(CIDR("nope/8") == nil)
        #expect(CIDR.loopbackV4.contains(IPAddress("127.9.9.9")!))
    }
}
