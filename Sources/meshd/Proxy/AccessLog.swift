import NIOCore

/// One JSON access-log line per request (`accessLog: true`).
enum AccessLog {
    static func line(
        direction: String, method: String, authority: String, path: String, status: Int, service: String?,
        target: String?, durationNanos: Int64, error: String?, client: String
    ) -> String {
        var s = "{\"ts_ms\":\(wallClockMillis())"
        s += ",\"direction\":\"\(direction)\",\"method\":\(quote(method)),\"authority\":\(quote(authority))"
        s += ",\"path\":\(quote(path)),\"status\":\(status),\"duration_ms\":\(Double(durationNanos) / 1e6)"
        s += ",\"client\":\(quote(client))"
        if let service { s += ",\"service\":\(quote(service))" }
        if let target { s += ",\"upstream\":\(quote(target))" }
        if let error { s += ",\"error\":\(quote(error))" }
        return s + "}"
    }

    static func wallClockMillis() -> Int64 {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        return Int64(ts.tv_sec) * 1000 + Int64(ts.tv_nsec) / 1_000_000
    }

    /// A JSON string literal.
    static func quote(_ s: String) -> String {
        var out = "\""
        for u in s.unicodeScalars {
            switch u {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            default:
                if u.value < 0x20 {
                    let hex = String(u.value, radix: 16)
                    out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
                } else {
                    out.unicodeScalars.append(u)
                }
            }
        }
        return out + "\""
    }
}

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#elseif canImport(Darwin)
    import Darwin
#endif
