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
