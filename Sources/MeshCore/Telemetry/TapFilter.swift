/// One finished request as `GET /tap` streams it: the access-log line, and what filters look at.
public struct TapEvent: Sendable {
    public var direction: String
    public var service: String?
    public var route: String?
    public var status: Int
    public var line: String

    public init(direction: String, service: String?, route: String?, status: Int, line: String) {
        self.direction = direction
        self.service = service
        self.route = route
        self.status = status
        self.line = line
    }
}

/// What a tap asked for (`GET /tap?service=S&route=R&status=5xx&direction=outbound&max=N`).
public struct TapFilter: Sendable, Equatable {
    public static let defaultMax = 100
    public static let maxMax = 100_000

    public var service: String?
    public var route: String?
    /// `5xx` (a class) or `503` (one status).
    public var status: String?
    public var direction: String?
    public var max: Int = TapFilter.defaultMax

    public init(query: Substring) throws(TapError) {
        for pair in query.split(separator: "&") {
            let kv = pair.split(separator: "=", maxSplits: 1)
            let key = String(kv[0])
            let value = kv.count > 1 ? String(kv[1]).removingPercentEncodingASCII : ""
            switch key {
            case "service": service = value
            case "route": route = value
            case "direction":
                guard value == "outbound" || value == "inbound" else { throw TapError("direction is outbound or inbound") }
                direction = value
            case "status":
                let ok =
                    (value.count == 3 && value.hasSuffix("xx") && ("1"..."5").contains(value.prefix(1)))
                    || (Int(value).map { (100...599).contains($0) } ?? false)
                guard ok else { throw TapError("status is a class such as 5xx or a status such as 503") }
                status = value
            case "max":
                guard let n = Int(value), (1...TapFilter.maxMax).contains(n) else { throw TapError("max is 1…\(TapFilter.maxMax)") }
                max = n
            default: throw TapError("unknown parameter '\(key)' (service, route, status, direction, max)")
            }
        }
    }

    public func matches(_ e: TapEvent) -> Bool {
        if let service, e.service != service { return false }
        if let route, e.route != route { return false }
        if let direction, e.direction != direction { return false }
        if let status {
            if status.hasSuffix("xx") {
                if String(e.status / 100) != status.prefix(1) { return false }
            } else if String(e.status) != status {
                return false
            }
        }
        return true
    }
}

public struct TapError: Error, CustomStringConvertible {
    public var description: String
    init(_ d: String) { description = d }
}

extension String {
    /// `%XX` decoded (ASCII query values: service and route names).
    public var removingPercentEncodingASCII: String {
        var out: [UInt8] = []
        var it = Array(utf8)[...]
        while let c = it.popFirst() {
            if c == UInt8(ascii: "%"), it.count >= 2, let v = UInt8(String(decoding: it.prefix(2), as: UTF8.self), radix: 16) {
                out.append(v)
                it = it.dropFirst(2)
            } else {
                out.append(c == UInt8(ascii: "+") ? UInt8(ascii: " ") : c)
            }
        }
        return String(decoding: out, as: UTF8.self)
    }
}
