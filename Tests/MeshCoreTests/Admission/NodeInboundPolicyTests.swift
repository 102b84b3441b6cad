import Testing

@testable import MeshCore

@Suite("Node inbound destinations")
struct NodeInboundPolicyTests {
    /// A node on 10.0.0.5 with pods in 10.42.1.0/24; admin on loopback, listeners on the node IP.
    let policy = NodeInboundPolicy(
        podCIDRs: [CIDR("10.42.1.0/24")!],
        listeners: [
            HostPort(host: "10.0.0.5", port: 4140), HostPort(host: "10.0.0.5", port: 4143),
            HostPort(host: "127.0.0.1", port: 4191),
        ],
        nodeIP: IPAddress("10.0.0.5"))

    @Test func aPodOfTheNodeIsForwarded() throws {
        #expect(try policy.destination("10.42.1.7:8080").get() == HostPort(host: "10.42.1.7", port: 8080))
        #expect(try policy.destination(" 10.42.1.7:4191 ").get().port == 4191)  // a pod's own port 4191
        #expect(try policy.destinationAddress("10.42.1.7:8080").get() == .init(address: .v4(0x0A2A_0107), port: 8080))
        let v6 = NodeInboundPolicy(podCIDRs: [CIDR("fd00:42::/64")!], listeners: [], nodeIP: nil)
        #expect(try v6.destination("[fd00:42::7]:80").get() == HostPort(host: "fd00:42:0:0:0:0:0:7", port: 80))
    }

    @Test func missingOrMalformed() {
        #expect(policy.destination(nil) == .failure(.missing))
        #expect(policy.destination("web:8080") == .failure(.malformed))  // never resolved
        #expect(policy.destination("10.42.1.7") == .failure(.malformed))
        #expect(policy.destination("10.42.1.7:0") == .failure(.malformed))
        #expect(policy.destination("10.42.1.7:70000") == .failure(.malformed))
    }

    @Test func outsideThePodCIDRs() {
        #expect(policy.destination("10.42.2.7:8080") == .failure(.notAPod))
        #expect(policy.destination("10.0.0.5:4191") == .failure(.notAPod))
        #expect(policy.destination("[fd00::1]:80") == .failure(.notAPod))
    }

    @Test func loopbackAndSpecialAddressesAreNeverReachedByDefault() {
        for dst in ["127.0.0.1:4191", "127.0.0.1:22", "[::1]:4191", "0.0.0.0:4191", "[::]:80", "169.254.169.254:80", "224.0.0.1:80"] {
            #expect(policy.destination(dst).isFailure, "\(dst)")
        }
        // A pod CIDR that merely contains loopback does not open it.
        let wide = NodeInboundPolicy(podCIDRs: [CIDR("0.0.0.0/0")!], listeners: [], nodeIP: nil)
        #expect(wide.destination("127.0.0.1:8080") == .failure(.specialAddress))
        #expect(wide.destination("169.254.169.254:80") == .failure(.specialAddress))
        #expect(wide.destination("0.0.0.0:8080") == .failure(.specialAddress))
        #expect(wide.destination("10.1.2.3:8080").isSuccess)
    }

    @Test func noPodCIDRsForwardsNowhere() {
        let none = NodeInboundPolicy(podCIDRs: [], listeners: [], nodeIP: nil)
        #expect(none.destination("10.42.1.7:8080") == .failure(.noPodCIDRs))
        #expect(none.destination("127.0.0.1:8080") == .failure(.noPodCIDRs))
    }

    @Test func loopbackPodsNamedExplicitlyButNeverMeshdItself() {
        // Tests on one machine: pods on 127.0.0.0/8, the node on 127.0.0.2, admin on 127.0.0.1.
        let local = NodeInboundPolicy(
            podCIDRs: [CIDR("127.0.0.0/8")!],
            listeners: [
                HostPort(host: "127.0.0.2", port: 4140), HostPort(host: "127.0.0.2", port: 4143),
                HostPort(host: "127.0.0.1", port: 4192), HostPort(host: "0.0.0.0", port: 9000),
            ],
            nodeIP: IPAddress("127.0.0.2"))
        #expect(local.destination("127.0.0.1:8080").isSuccess)
        #expect(local.destination("127.0.0.2:8080").isSuccess)
        #expect(local.destination("127.0.0.1:4192") == .failure(.ownListener))
        #expect(local.destination("127.0.0.2:4143") == .failure(.ownListener))
        #expect(local.destination("127.0.0.2:4140") == .failure(.ownListener))
        #expect(local.destination("127.0.0.7:9000") == .failure(.ownListener))  // bound to 0.0.0.0
        #expect(local.destination("127.0.0.3:4192").isSuccess)  // another address's port 4192 is not meshd
    }

    @Test func fromConfigIncludesBoundListeners() {
        var config = MeshConfig()
        config.mode = .node
        config.nodeIP = "127.0.0.2"
        config.node.podCIDRs = [CIDR("127.0.0.0/8")!]
        config.admin.listen = HostPort(host: "127.0.0.1", port: 0)
        let policy = NodeInboundPolicy(config: config, boundListeners: [HostPort(host: "127.0.0.1", port: 40001)])
        #expect(policy.destination("127.0.0.1:40001") == .failure(.ownListener))
        #expect(policy.destination("127.0.0.2:4143") == .failure(.ownListener))
        #expect(policy.destination("127.0.0.1:8080").isSuccess)
    }
}

extension Result {
    var isSuccess: Bool {
        if case .success = self { return true }
        return false
    }
    var isFailure: Bool { !isSuccess }
}
