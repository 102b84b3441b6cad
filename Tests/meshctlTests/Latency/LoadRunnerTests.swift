import Histogram
import NIOPosix
import Testing

@testable import meshctl

/// The load generator against the in-process delay backend over loopback (port 0).
@Suite("latency: open loop against a real backend", .serialized)
struct LoadRunnerTests {
    static func workload(
        rate: Double, connections: Int, duration: UInt64, warmup: UInt64 = 200_000_000, closedLoop: Bool = false,
        proto: LoadProtocol = .http1
    ) -> Workload {
        Workload(
            schedule: LoadSchedule(rate: rate, warmupNanos: warmup, durationNanos: duration, workers: 1), connections: connections,
            closedLoop: closedLoop, timeoutNanos: 5_000_000_000, connectTimeoutNanos: 1_000_000_000, headers: [], proto: proto)
    }

    /// One event loop for the load generator and the backend: one thread, nothing else competing for the
    /// machine's 2 cores from this test.
    static let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)

    static func backend(delayNanos: UInt64, serial: Bool, http2: Bool = false) async throws -> DelayBackend {
        try await DelayBackend.start(delayNanos: delayNanos, serial: serial, http2: http2, on: group.next())
    }

    static func measure(port: Int, _ w: Workload) async throws -> TargetMeasurement {
        let target = try LatencyTarget.parse(target: "t=http://127.0.0.1:\(port)/", authority: nil)
        return try await LoadRunner.measure(target, w, group: group)
    }

    /// Accuracy against wall-clock time (p50 within 5–6 ms, achieved rate) is measured end to end in
    /// tests/e2e/test_meshctl_latency.py, not here: unit tests run in parallel on a shared machine and
    /// must not depend on timing. This one checks what holds whatever the load.
    @Test("a backend answering after 5 ms: every request measured, none faster than the backend")
    func fixedDelay() async throws {
        let backend = try await Self.backend(delayNanos: 5_000_000, serial: false)
        defer { Task { await backend.stop() } }
        let m = try await Self.measure(port: backend.port, Self.workload(rate: 1000, connections: 16, duration: 1_000_000_000))
        #expect(m.failure == nil)
        #expect(m.result.errors.total == 0)
        #expect(m.result.ok == 1000)
        #expect(m.result.measuredRequests == 1000)
        let p = try #require(Percentiles(m.result.latency))
        #expect(p.p50 >= 5.0, "the latency can never be below the backend's delay")
        #expect(p.max >= p.p99 && p.p99 >= p.p50)
    }

    @Test("overload: open loop shows the queueing (p99 ≫ 10 ms), closed loop hides it (p99 near 10 ms)")
    func coordinatedOmission() async throws {
        // One request at a time, 10 ms each: at most 100 req/s; we ask for 200 req/s on 1 connection.
        let backend = try await Self.backend(delayNanos: 10_000_000, serial: true)
        defer { Task { await backend.stop() } }
        let open = try await Self.measure(
            port: backend.port, Self.workload(rate: 200, connections: 1, duration: 2_000_000_000, warmup: 0))
        let closed = try await Self.measure(
            port: backend.port, Self.workload(rate: 200, connections: 1, duration: 2_000_000_000, warmup: 0, closedLoop: true))
        let o = try #require(Percentiles(open.result.latency))
        let c = try #require(Percentiles(closed.result.latency))
        #expect(open.result.errors.total == 0)
        #expect(closed.result.errors.total == 0)
        // Open loop: request k waits for the k before it: the last ones ~2 s.
        #expect(o.p50 > 200, "open p50 \(o.p50)")
        #expect(o.p99 > 1000, "open p99 \(o.p99)")
        // Closed loop: every request takes the backend's 10 ms once it is sent (bounds loose enough for
        // a busy machine: the point is an order of magnitude below the open-loop figures).
        #expect(c.p50 >= 10 && c.p50 < 50, "closed p50 \(c.p50)")
        #expect(c.p99 < 100, "closed p99 \(c.p99)")
        // Both achieve about the backend's capacity, not the requested rate.
        #expect(open.achievedRate < 120 && open.achievedRate > 40, "open achieved \(open.achievedRate)")
        // The open-loop latencies grow over the run: the first requests are fast, the last slow.
        #expect(o.max > 10 * c.max)
    }

    @Test("timeouts, refused connections and unthrottled closed loop")
    func errors() async throws {
        let slow = try await Self.backend(delayNanos: 2_000_000_000, serial: false)
        defer { Task { await slow.stop() } }
        var w = Self.workload(rate: 50, connections: 2, duration: 500_000_000, warmup: 0)
        w.timeoutNanos = 100_000_000
        let m = try await Self.measure(port: slow.port, w)
        #expect(m.result.ok == 0)
        #expect(m.result.errors.timeout == 25)
        #expect(m.result.errors.failedRequests == m.result.measuredRequests)

        // A port nothing listens on: the target is reported as failed, not measured.
        let closedPort = try await Self.backend(delayNanos: 0, serial: false)
        let port = closedPort.port
        await closedPort.stop()
        let refused = try await Self.measure(port: port, Self.workload(rate: 50, connections: 2, duration: 200_000_000))
        #expect(refused.failure?.contains("cannot connect") == true)

        let fast = try await Self.backend(delayNanos: 0, serial: false)
        defer { Task { await fast.stop() } }
        let flat = try await Self.measure(
            port: fast.port, Self.workload(rate: 0, connections: 2, duration: 300_000_000, warmup: 0, closedLoop: true))
        #expect(flat.result.errors.total == 0)
        #expect(flat.result.ok > 100)
        #expect(flat.result.ok == flat.result.measuredRequests)
    }

    @Test("HTTP/2: a backend answering after 5 ms, every request a stream, none faster than the backend")
    func http2FixedDelay() async throws {
        let backend = try await Self.backend(delayNanos: 5_000_000, serial: false, http2: true)
        defer { Task { await backend.stop() } }
        let m = try await Self.measure(
            port: backend.port, Self.workload(rate: 500, connections: 2, duration: 1_000_000_000, proto: .h2))
        #expect(m.failure == nil)
        #expect(m.proto == .h2)
        #expect(m.result.errors.total == 0)
        #expect(m.result.ok == 500)
        #expect(m.result.measuredRequests == 500)
        #expect(m.result.connected == 2)
        let p = try #require(Percentiles(m.result.latency))
        #expect(p.p50 >= 5.0, "the latency can never be below the backend's delay")
    }

    @Test("HTTP/2: streams past the timeout are reset and counted; an HTTP/1.1-only server is reported, not measured")
    func http2Errors() async throws {
        let slow = try await Self.backend(delayNanos: 2_000_000_000, serial: false, http2: true)
        defer { Task { await slow.stop() } }
        var w = Self.workload(rate: 50, connections: 2, duration: 500_000_000, warmup: 0, proto: .h2)
        w.timeoutNanos = 100_000_000
        let m = try await Self.measure(port: slow.port, w)
        #expect(m.result.ok == 0)
        #expect(m.result.errors.timeout == 25)
        #expect(m.result.errors.failedRequests == m.result.measuredRequests)

        let http1 = try await Self.backend(delayNanos: 0, serial: false)
        defer { Task { await http1.stop() } }
        let refused = try await Self.measure(
            port: http1.port, Self.workload(rate: 50, connections: 2, duration: 200_000_000, proto: .h2))
        #expect(refused.result.ok == 0)
        #expect(refused.failure?.contains("HTTP/2 handshake failed") == true, "\(refused.failure ?? "no failure")")
    }
}
