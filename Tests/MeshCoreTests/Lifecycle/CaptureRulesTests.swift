import Testing

@testable import MeshCore

@Suite("Transparent capture rules")
struct CaptureRulesTests {
    func commands(_ steps: [CaptureRules.Step]) -> [String] {
        steps.map { step in
            switch step {
            case .run(let a): return a.joined(separator: " ")
            case .tolerate(let a): return "? " + a.joined(separator: " ")
            case .ensure(_, let add): return "+ " + add.joined(separator: " ")
            case .deleteAll(let a): return "* " + a.joined(separator: " ")
            }
        }
    }

    @Test func sidecarRedirectsBothWaysExceptMeshdItsAdminAndSkips() throws {
        var rules = CaptureRules()
        rules.skipOutboundPorts = [22]
        rules.skipInboundPorts = [9090]
        rules.skipCIDRs = [CIDR("169.254.169.254/32")!, CIDR("fd00::/8")!]
        try rules.validate()
        #expect(rules.families == [.ipv4, .ipv6])
        let v4 = commands(rules.install(.ipv4))
        #expect(
            v4 == [
                "? -t nat -N MESHD_INBOUND", "-t nat -F MESHD_INBOUND",
                "-t nat -A MESHD_INBOUND -p tcp --dport 4191 -j RETURN",
                "-t nat -A MESHD_INBOUND -p tcp --dport 4143 -j RETURN",
                "-t nat -A MESHD_INBOUND -p tcp --dport 9090 -j RETURN",
                "-t nat -A MESHD_INBOUND -p tcp -j REDIRECT --to-ports 4143",
                "+ -t nat -A PREROUTING -p tcp -j MESHD_INBOUND",
                "? -t nat -N MESHD_OUTBOUND", "-t nat -F MESHD_OUTBOUND",
                "-t nat -A MESHD_OUTBOUND -m owner --uid-owner 4140 -j RETURN",
                "-t nat -A MESHD_OUTBOUND -o lo -j RETURN",
                "-t nat -A MESHD_OUTBOUND -p tcp --dport 22 -j RETURN",
                "-t nat -A MESHD_OUTBOUND -d 169.254.169.254/32 -j RETURN",
                "-t nat -A MESHD_OUTBOUND -p tcp -j REDIRECT --to-ports 4140",
                "+ -t nat -A OUTPUT -p tcp -j MESHD_OUTBOUND",
            ])
        // Each family gets only its own CIDRs.
        let v6 = commands(rules.install(.ipv6))
        #expect(v6.contains("-t nat -A MESHD_OUTBOUND -d fd00:0:0:0:0:0:0:0/8 -j RETURN"))
        #expect(!v6.contains { $0.contains("169.254") })
        // A jump is checked before it is added: installing twice leaves one.
        guard case .ensure(let check, _)? = rules.install(.ipv4).first(where: { if case .ensure = $0 { true } else { false } }) else {
            Issue.record("no ensured jump")
            return
        }
        #expect(check == ["-t", "nat", "-C", "PREROUTING", "-p", "tcp", "-j", "MESHD_INBOUND"])
    }

    @Test func sidecarRemoveDeletesJumpsThenChains() {
        let steps = commands(CaptureRules().remove(.ipv4))
        #expect(
            steps == [
                "* -t nat -D PREROUTING -p tcp -j MESHD_INBOUND", "* -t nat -D OUTPUT -p tcp -j MESHD_OUTBOUND",
                "? -t nat -F MESHD_INBOUND", "? -t nat -X MESHD_INBOUND", "? -t nat -F MESHD_OUTBOUND",
                "? -t nat -X MESHD_OUTBOUND",
            ])
    }

    @Test func nodeSendsPodTrafficToTheNodeProxy() throws {
        var rules = CaptureRules()
        rules.mode = .node
        rules.podCIDRs = [CIDR("10.42.1.0/24")!]
        rules.nodeIP = IPAddress("192.168.40.1")
        try rules.validate()
        #expect(rules.families == [.ipv4])
        #expect(
            commands(rules.install(.ipv4)) == [
                "? -t nat -N MESHD_NODE_OUTBOUND", "-t nat -F MESHD_NODE_OUTBOUND",
                "-t nat -A MESHD_NODE_OUTBOUND -d 192.168.40.1 -j RETURN",
                "-t nat -A MESHD_NODE_OUTBOUND -p tcp -j DNAT --to-destination 192.168.40.1:4140",
                "+ -t nat -A PREROUTING -s 10.42.1.0/24 -p tcp -j MESHD_NODE_OUTBOUND",
            ])
        var v6 = rules
        v6.nodeIP = IPAddress("fd00::1")
        v6.podCIDRs = [CIDR("fd42:1::/64")!]
        #expect(v6.families == [.ipv6])
        #expect(
            commands(v6.install(.ipv6)).contains("-t nat -A MESHD_NODE_OUTBOUND -p tcp -j DNAT --to-destination [fd00:0:0:0:0:0:0:1]:4140"))
    }

    @Test func nodeRemoveFindsEveryJump() {
        let listing = """
            -P PREROUTING ACCEPT
            -A PREROUTING -s 10.42.1.0/24 -p tcp -j MESHD_NODE_OUTBOUND
            -A PREROUTING -p tcp -j KUBE-SERVICES
            -A PREROUTING -s 10.42.9.0/24 -p tcp -j MESHD_NODE_OUTBOUND
            """
        #expect(
            CaptureRules.jumpsToRemove(listing: listing) == [
                ["-t", "nat", "-D", "PREROUTING", "-s", "10.42.1.0/24", "-p", "tcp", "-j", "MESHD_NODE_OUTBOUND"],
                ["-t", "nat", "-D", "PREROUTING", "-s", "10.42.9.0/24", "-p", "tcp", "-j", "MESHD_NODE_OUTBOUND"],
            ])
    }

    @Test func invalidOptionsAreRefused() {
        var node = CaptureRules()
        node.mode = .node
        #expect(throws: CaptureRules.Problem.self) { try node.validate() }
        node.podCIDRs = [CIDR("10.0.0.0/8")!]
        #expect(throws: CaptureRules.Problem.self) { try node.validate() }
        var port = CaptureRules()
        port.outboundPort = 0
        #expect(throws: CaptureRules.Problem.self) { try port.validate() }
        var skip = CaptureRules()
        skip.skipInboundPorts = [70000]
        #expect(throws: CaptureRules.Problem.self) { try skip.validate() }
    }
}
