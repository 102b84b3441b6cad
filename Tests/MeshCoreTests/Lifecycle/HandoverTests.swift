import Testing

@testable import MeshCore

@Suite("Listener hand-over protocol")
struct HandoverTests {
    @Test func messagesRoundTrip() {
        let messages: [Handover.Message] = [
            .takeover(version: 1), .listeners(["admin", "outbound", "inbound", "tcp:db"]), .listeners([]),
            .refused("this meshd is already stopping"), .ready, .done,
        ]
        for m in messages {
            #expect(Handover.Message(line: Substring(m.line)) == m, "\(m.line)")
            #expect(m.line.hasSuffix("\n"))
        }
        #expect(Handover.Message(line: "READY\r\n") == .ready)
    }

    @Test func malformedLinesAreNotMessages() {
        for line in [
            "", "\n", "HELLO", "TAKEOVER", "TAKEOVER x", "TAKEOVER 0", "TAKEOVER 1 2", "READY now", "DONE 1",
            "LISTENERS a a", "LISTENERS a\u{7}b", "takeover 1",
        ] {
            #expect(Handover.Message(line: Substring(line)) == nil, "\(line.debugDescription)")
        }
        let tooMany = "LISTENERS " + (0...Handover.maxListeners).map { "l\($0)" }.joined(separator: " ")
        #expect(Handover.Message(line: Substring(tooMany)) == nil)
        let huge = "REFUSED " + String(repeating: "x", count: Handover.maxLineBytes)
        #expect(Handover.Message(line: Substring(huge)) == nil)
        // A reason with a newline cannot split the message.
        #expect(Handover.Message.refused("a\nb").line == "REFUSED a b\n")
    }

    @Test func planAdoptsOfferedBindsNewClosesRemoved() {
        let plan = Handover.Plan(
            configured: ["admin", "outbound", "inbound", "tcp:new"], offered: ["inbound", "admin", "outbound", "tcp:old"])
        #expect(plan.adopt == ["admin", "outbound", "inbound"])
        #expect(plan.bind == ["tcp:new"])
        #expect(plan.close == ["tcp:old"])
        #expect(Handover.Plan(configured: ["admin"], offered: []) == Handover.Plan(configured: ["admin"], offered: []))
        #expect(Handover.Plan(configured: ["admin"], offered: []).bind == ["admin"])
    }

    @Test func giverOffersThenStopsWhenReady() {
        var giver = Handover.Giver()
        let listeners = ["admin", "outbound", "inbound"]
        #expect(giver.received(.takeover(version: 1), listeners: listeners, draining: false) == .offer(listeners))
        #expect(giver.state == .offered)
        #expect(giver.received(.ready, listeners: listeners, draining: false) == .stopAcceptingAndDrain)
        #expect(giver.state == .handedOver)
        #expect(giver.connectionEnded() == nil)
        #expect(giver.state == .handedOver)
    }

    @Test func successorThatLeavesEarlyChangesNothing() {
        var giver = Handover.Giver()
        #expect(giver.connectionEnded() != nil)
        #expect(giver.state == .closed)

        var offered = Handover.Giver()
        _ = offered.received(.takeover(version: 1), listeners: ["admin"], draining: false)
        guard case .abandon? = offered.connectionEnded() else {
            Issue.record("expected abandon")
            return
        }
        #expect(offered.state == .closed)
    }

    @Test func refusalsAndProtocolErrors() {
        var v2 = Handover.Giver()
        guard case .refuse = v2.received(.takeover(version: 2), listeners: ["admin"], draining: false) else {
            Issue.record("version 2 not refused")
            return
        }
        var stopping = Handover.Giver()
        guard case .refuse = stopping.received(.takeover(version: 1), listeners: ["admin"], draining: true) else {
            Issue.record("a draining meshd offered its listeners")
            return
        }
        // READY before TAKEOVER, garbage, or a second TAKEOVER: the connection is dropped, nothing handed.
        for first in [Handover.Message.ready, .done, .listeners([])] {
            var g = Handover.Giver()
            guard case .abandon = g.received(first, listeners: ["admin"], draining: false) else {
                Issue.record("\(first) accepted first")
                continue
            }
            #expect(g.state == .closed)
        }
        var garbage = Handover.Giver()
        guard case .abandon = garbage.received(nil, listeners: ["admin"], draining: false) else {
            Issue.record("garbage accepted")
            return
        }
        var twice = Handover.Giver()
        _ = twice.received(.takeover(version: 1), listeners: ["admin"], draining: false)
        guard case .abandon = twice.received(.takeover(version: 1), listeners: ["admin"], draining: false) else {
            Issue.record("second TAKEOVER accepted")
            return
        }
        #expect(twice.state == .closed)
    }

    @Test func readyWhileDrainingStillHandsOver() {
        var giver = Handover.Giver()
        _ = giver.received(.takeover(version: 1), listeners: ["admin"], draining: false)
        #expect(giver.received(.ready, listeners: ["admin"], draining: true) == .stopAcceptingAndDrain)
    }
}
