import Testing

@testable import MeshCore

@Suite("Balancers")
struct BalancerTests {
    func endpoints(_ weights: [Int]) -> [EndpointConfig] {
        weights.enumerated().map { EndpointConfig(address: HostPort(host: "10.0.0.\($0.offset + 1)", port: 80), weight: $0.element) }
    }

    @Test func roundRobinIsExact() {
        var b = Balancer(kind: .roundRobin, endpoints: endpoints([1, 1, 1]), seed: 0)
        var counts = [0, 0, 0]
        var sequence: [Int] = []
        for _ in 0..<300 {
            let i = b.pick()!
            counts[i] += 1
            if sequence.count < 6 { sequence.append(i) }
        }
        #expect(counts == [100, 100, 100])
        #expect(sequence == [0, 1, 2, 0, 1, 2])
    }

    @Test func roundRobinStartsAtTheSeededOffset() {
        var b = Balancer(kind: .roundRobin, endpoints: endpoints([1, 1, 1]), seed: 4)
        #expect(b.pick() == 1)
    }

    @Test func weightedRoundRobinIsSmoothAndExact() {
        var b = Balancer(kind: .roundRobin, endpoints: endpoints([5, 1, 1]), seed: 0)
        let cycle = (0..<7).map { _ in b.pick()! }
        #expect(cycle.filter { $0 == 0 }.count == 5)
        // Smooth: the heavy endpoint never takes more than 3 picks in a row (nginx's interleaving).
        #expect(cycle == [0, 0, 1, 0, 2, 0, 0])
        var counts = [0, 0, 0]
        for _ in 0..<700 { counts[b.pick()!] += 1 }
        #expect(counts == [500, 100, 100])
    }

    @Test func emptyServiceHasNoPick() {
        var b = Balancer(kind: .roundRobin, endpoints: [], seed: 0)
        #expect(b.pick() == nil)
    }
}
