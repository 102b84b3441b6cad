import Logging
import NIOConcurrencyHelpers

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#elseif canImport(Darwin)
    import Darwin
#endif

/// The process-wide log level, changeable at run time through the admin API (`PUT /log-level`).
final class LogLevelBox: Sendable {
    static let shared = LogLevelBox()
    private let box = NIOLockedValueBox<Logger.Level>(.info)
    var level: Logger.Level {
        get { box.withLockedValue { $0 } }
        set { box.withLockedValue { $0 = newValue } }
    }
}

/// One JSON object per line on standard error: `{"ts":..., "level":..., "msg":..., ...metadata}`.
struct JSONLogHandler: LogHandler {
    let label: String
    var metadata: Logger.Metadata = [:]

    var logLevel: Logger.Level {
        get { LogLevelBox.shared.level }
        set { LogLevelBox.shared.level = newValue }
    }

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        var line = "{\"ts\":\"\(Self.timestamp())\",\"level\":\"\(event.level.rawValue)\",\"logger\":\"\(label)\""
        line += ",\"msg\":" + AccessLog.quote("\(event.message)")
        var merged = self.metadata
        if let extra = event.metadata { merged.merge(extra) { _, new in new } }
        for key in merged.keys.sorted() {
            line += "," + AccessLog.quote(key) + ":" + AccessLog.quote("\(merged[key]!)")
        }
        line += "}\n"
        writeStderr(line)
    }

    static func timestamp() -> String {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        var t = time_t(ts.tv_sec)
        var tmv = tm()
        gmtime_r(&t, &tmv)
        let ms = Int(ts.tv_nsec) / 1_000_000
        func p(_ v: Int32, _ w: Int = 2) -> String {
            let s = String(v)
            return String(repeating: "0", count: max(0, w - s.count)) + s
        }
        return
            "\(p(tmv.tm_year + 1900, 4))-\(p(tmv.tm_mon + 1))-\(p(tmv.tm_mday))T\(p(tmv.tm_hour)):\(p(tmv.tm_min)):\(p(tmv.tm_sec)).\(p(Int32(ms), 3))Z"
    }
}

/// Writes to file descriptor 2 in as few calls as it takes (no shared FILE* state).
func writeStderr(_ text: String) {
    var text = text
    text.withUTF8 { writeAll(fd: 2, UnsafeRawBufferPointer($0)) }
}

/// Writes all of `bytes` to `fd` (retrying short writes and EINTR); stops at the first error.
func writeAll(fd: Int32, _ bytes: UnsafeRawBufferPointer) {
    guard let base = bytes.baseAddress else { return }
    var offset = 0
    while offset < bytes.count {
        let n = write(fd, base + offset, bytes.count - offset)
        if n < 0 && errno == EINTR { continue }
        if n <= 0 { break }
        offset += n
    }
}
