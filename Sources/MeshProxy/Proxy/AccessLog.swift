import Atomics
import CoreMetrics
import Dispatch
import MeshCore
import NIOConcurrencyHelpers
import NIOCore

/// One JSON access-log line per request (`accessLog: true`). Fields (docs/operations.md): `ts_ms`,
/// `direction`, `method`, `authority`, `path`, `status`, `grpc_status` (gRPC calls), `duration_ms`,
/// `client` (the source address; node mode: the source pod), `identity` (the caller's SPIFFE ID over
/// mTLS), `service`, `route`, `upstream` (the last endpoint tried), `attempts`, `bytes_in` and `bytes_out`
/// (body bytes from and to the client), `request_id`, `trace_id`, and `error` (meshd's reason when
/// meshd produced the reply).
enum AccessLog {
    struct Entry {
        var direction: String
        var method: String
        var authority: Substring
        var path: Substring
        var status: Int
        var grpcStatus: Int?
        var durationNanos: Int64
        var client: String
        var identity: String?
        var service: String?
        var route: String?
        var upstream: String?
        var attempts: Int
        var bytesIn: Int
        var bytesOut: Int
        var requestID: String
        var traceID: Substring
        var error: String?
    }

    /// The line as text (the tap's event, tests).
    static func line(_ e: Entry) -> String {
        var bytes: [UInt8] = []
        write(e, into: &bytes)
        return String(decoding: bytes, as: UTF8.self)
    }

    /// Appends the line (without its newline) to `out`, byte by byte: no `String` is built per field.
    static func write(_ e: Entry, into out: inout [UInt8]) {
        typealias J = JSONBytes
        J.appendRaw("{\"ts_ms\":", to: &out)
        J.appendDecimal(wallClockMillis(), to: &out)
        J.appendRaw(",\"direction\":\"", to: &out)
        J.appendRaw(e.direction, to: &out)
        J.appendRaw("\",\"method\":", to: &out)
        J.appendQuoted(e.method, to: &out)
        J.appendRaw(",\"authority\":", to: &out)
        J.appendQuoted(e.authority, to: &out)
        J.appendRaw(",\"path\":", to: &out)
        J.appendQuoted(e.path, to: &out)
        J.appendRaw(",\"status\":", to: &out)
        J.appendDecimal(e.status, to: &out)
        if let g = e.grpcStatus {
            J.appendRaw(",\"grpc_status\":", to: &out)
            J.appendDecimal(g, to: &out)
        }
        J.appendRaw(",\"duration_ms\":", to: &out)
        J.appendMilliseconds(nanoseconds: e.durationNanos, to: &out)
        J.appendRaw(",\"client\":", to: &out)
        J.appendQuoted(e.client, to: &out)
        if let identity = e.identity {
            J.appendRaw(",\"identity\":", to: &out)
            J.appendQuoted(identity, to: &out)
        }
        if let service = e.service {
            J.appendRaw(",\"service\":", to: &out)
            J.appendQuoted(service, to: &out)
        }
        if let route = e.route {
            J.appendRaw(",\"route\":", to: &out)
            J.appendQuoted(route, to: &out)
        }
        if let upstream = e.upstream {
            J.appendRaw(",\"upstream\":", to: &out)
            J.appendQuoted(upstream, to: &out)
        }
        J.appendRaw(",\"attempts\":", to: &out)
        J.appendDecimal(e.attempts, to: &out)
        J.appendRaw(",\"bytes_in\":", to: &out)
        J.appendDecimal(e.bytesIn, to: &out)
        J.appendRaw(",\"bytes_out\":", to: &out)
        J.appendDecimal(e.bytesOut, to: &out)
        J.appendRaw(",\"request_id\":", to: &out)
        J.appendQuoted(e.requestID, to: &out)
        J.appendRaw(",\"trace_id\":", to: &out)
        J.appendQuoted(e.traceID, to: &out)
        if let error = e.error {
            J.appendRaw(",\"error\":", to: &out)
            J.appendQuoted(error, to: &out)
        }
        J.appendRaw("}", to: &out)
    }

    static func wallClockMillis() -> Int64 {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        return Int64(ts.tv_sec) * 1000 + Int64(ts.tv_nsec) / 1_000_000
    }

    /// A JSON string literal.
    static func quote(_ s: String) -> String { JSONValue.quoted(s) }
}

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#elseif canImport(Darwin)
    import Darwin
#endif

/// One event loop's access-log lines since its last flush (no lock, no syscall per request). A flush
/// — every 100 ms tick, or at 64 KiB — hands the bytes to the process's `AccessLogWriter`.
struct AccessLogBuffer {
    private var buffer: [UInt8] = []
    private var lines = 0
    var writer: AccessLogWriter?

    mutating func append(_ line: String) {
        buffer.append(contentsOf: line.utf8)
        endLine()
    }

    /// The entry's line, written into the buffer in place.
    mutating func append(_ entry: AccessLog.Entry) {
        AccessLog.write(entry, into: &buffer)
        endLine()
    }

    private mutating func endLine() {
        buffer.append(UInt8(ascii: "\n"))
        lines += 1
        if buffer.count >= 64 * 1024 { flush() }
    }

    mutating func flush() {
        guard !buffer.isEmpty else { return }
        writer?.submit(buffer, lines: lines)
        buffer.removeAll(keepingCapacity: true)
        lines = 0
    }
}

/// Writes access-log lines to standard output or to `accessLog.path` from its own thread (a serial
/// dispatch queue), so a slow or stuck reader or disk never blocks an event loop. Bound:
/// `maxQueuedBytes` (4 MiB) waiting to be written; past it whole chunks are dropped and their lines
/// counted in `meshd_access_log_dropped_total`. A file is reopened on SIGUSR1 (after a rotation
/// renamed it) and when a reload names another path.
final class AccessLogWriter: Sendable {
    static let maxQueuedBytes = 4 << 20
    private let queue = DispatchQueue(label: "meshd.access-log")
    private let queued = ManagedAtomic<Int>(0)
    private let dropped: CoreMetrics.Counter
    /// The descriptor written to (1: standard output); swapped on the writer's queue only.
    private let fd = ManagedAtomic<Int32>(1)
    private let path = NIOLockedValueBox<String?>(nil)

    init(dropped: CoreMetrics.Counter) {
        self.dropped = dropped
    }

    /// Writes to `path` from now on (nil: standard output), opening it for appending (created 0644).
    /// Lines already queued go to the previous destination. Throws when the file cannot be opened;
    /// the previous destination is kept then.
    func use(path newPath: String?) throws {
        let result: Result<Void, FileReadError> = queue.sync {
            let next: Int32
            if let newPath {
                next = open(newPath, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0o644)
                guard next >= 0 else { return .failure(FileReadError(path: newPath, errno: errno)) }
            } else {
                next = 1
            }
            let old = fd.exchange(next, ordering: .relaxed)
            if old > 2 { close(old) }
            path.withLockedValue { $0 = newPath }
            return .success(())
        }
        try result.get()
    }

    /// SIGUSR1: reopens the file (log rotation moved it away); nothing to do for standard output.
    func reopen() throws {
        guard let p = path.withLockedValue({ $0 }) else { return }
        try use(path: p)
    }

    var currentPath: String? { path.withLockedValue { $0 } }

    /// Called by a loop with one flush's worth of lines.
    func submit(_ bytes: [UInt8], lines: Int) {
        let size = bytes.count
        guard queued.wrappingIncrementThenLoad(by: size, ordering: .relaxed) <= Self.maxQueuedBytes else {
            queued.wrappingDecrement(by: size, ordering: .relaxed)
            dropped.increment(by: lines)
            return
        }
        queue.async { [queued, fd] in
            let fd = fd.load(ordering: .relaxed)
            bytes.withUnsafeBytes { writeAll(fd: fd, $0) }
            queued.wrappingDecrement(by: size, ordering: .relaxed)
        }
    }

    /// Waits until everything submitted is written, at most `timeout` (a stuck stdout must not keep
    /// meshd from exiting).
    func drain(timeout: Duration = .seconds(2)) {
        let done = DispatchSemaphore(value: 0)
        queue.async { done.signal() }
        let c = timeout.components
        _ = done.wait(timeout: .now() + .nanoseconds(Int(c.seconds) * 1_000_000_000 + Int(c.attoseconds / 1_000_000_000)))
    }
}
