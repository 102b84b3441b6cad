/// gRPC over HTTP/2 as a proxy sees it (https://github.com/grpc/grpc/blob/master/doc/PROTOCOL-HTTP2.md):
/// the `grpc-timeout` header, status codes and their names, and the `grpc-message` encoding.
public enum GRPC {
    /// The 17 status codes, by number (index = code), as metric labels.
    public static let codeNames = [
        "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND", "ALREADY_EXISTS",
        "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED",
        "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED",
    ]

    /// Whether a `content-type` value is gRPC's (`application/grpc`, `application/grpc+proto`...).
    /// Concrete, and reading the value's bytes in place: it runs for every request that has a
    /// content type (`application/json` is as long as `application/grpc`, so a REST POST compares all
    /// of it). The version generic over `StringProtocol` ran unspecialised from meshd's proxy module,
    /// about 15 k instructions a call (callgrind, 2026-12-05).
    @inlinable
    public static func isGRPC(contentType: String) -> Bool {
        contentType.meshWithUTF8 { isGRPC(contentTypeBytes: $0) }
    }

    @inlinable
    public static func isGRPC(contentTypeBytes bytes: UnsafeBufferPointer<UInt8>) -> Bool {
        let prefix: StaticString = "application/grpc"
        let n = prefix.utf8CodeUnitCount
        guard bytes.count >= n,
            HeaderPolicy.equalsIgnoringASCIICase(
                bytes: UnsafeBufferPointer(rebasing: bytes[..<n]), UnsafeBufferPointer(start: prefix.utf8Start, count: n))
        else { return false }
        guard bytes.count > n else { return true }
        return bytes[n] == UInt8(ascii: "+") || bytes[n] == UInt8(ascii: ";")
    }

    /// `grpc-timeout`: 1 to 8 ASCII digits and a unit (H, M, S, m, u, n). Nil when malformed (the
    /// header is then ignored, as gRPC servers do).
    /// Concrete and allocation-free (bytes read in place): it runs for every gRPC call with a deadline.
    public static func parseTimeout(_ value: String) -> MeshDuration? {
        return value.meshWithUTF8 { bytes in
            guard bytes.count >= 2, bytes.count <= 9 else { return nil }
            var amount: Int64 = 0
            for b in bytes[..<(bytes.count - 1)] {
                guard b >= 48 && b <= 57 else { return nil }
                amount = amount * 10 + Int64(b - 48)
            }
            let perUnit: Int64
            switch bytes[bytes.count - 1] {
            case UInt8(ascii: "H"): perUnit = 3_600_000_000_000
            case UInt8(ascii: "M"): perUnit = 60_000_000_000
            case UInt8(ascii: "S"): perUnit = 1_000_000_000
            case UInt8(ascii: "m"): perUnit = 1_000_000
            case UInt8(ascii: "u"): perUnit = 1_000
            case UInt8(ascii: "n"): perUnit = 1
            default: return nil
            }
            // 99 999 999 hours do not fit in Int64 nanoseconds: saturate.
            let (product, overflow) = amount.multipliedReportingOverflow(by: perUnit)
            return MeshDuration(nanoseconds: overflow ? Int64.max / 2 : product)
        }
    }

    /// The `grpc-timeout` value for a remaining duration (as a client library would send it).
    public static func formatTimeout(_ d: MeshDuration) -> String {
        let ns = max(d.nanoseconds, 0)
        if ns < 100_000_000 { return "\(max(ns / 1_000, 1))u" }
        return "\(min(ns / 1_000_000, 99_999_999))m"
    }

    /// `grpc-message` is percent-encoded: bytes outside printable ASCII and `%` itself.
    public static func percentEncode(_ message: String) -> String {
        var out: [UInt8] = []
        out.reserveCapacity(message.utf8.count)
        let hex = Array("0123456789ABCDEF".utf8)
        for b in message.utf8 {
            if b >= 0x20 && b <= 0x7E && b != UInt8(ascii: "%") {
                out.append(b)
            } else {
                out.append(UInt8(ascii: "%"))
                out.append(hex[Int(b >> 4)])
                out.append(hex[Int(b & 0xF)])
            }
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// A status code from a `grpc-status` value; nil when absent or malformed. Concrete: it runs for
    /// every gRPC response (generic, unspecialised from the proxy module: 2 k instructions a call).
    public static func status(_ value: String?) -> Int? {
        guard let value, let n = Int(value), n >= 0 else { return nil }
        return n
    }

    /// The metric label of a status code (codes above 16 are `UNKNOWN`, as the spec says).
    public static func codeName(_ code: Int) -> String {
        code >= 0 && code < codeNames.count ? codeNames[code] : "UNKNOWN"
    }
}

extension MeshError {
    /// The gRPC status a reply of meshd carries when the request was gRPC (a bare HTTP status would
    /// be a protocol error to a gRPC client).
    public var grpcStatus: Int {
        switch self {
        case .noRoute: return 12  // UNIMPLEMENTED
        case .noEndpoints, .connectFailed, .upstreamReset, .connectionLimit: return 14  // UNAVAILABLE
        case .upstreamTimeout, .idleTimeout, .headerTimeout: return 4  // DEADLINE_EXCEEDED
        case .overflowConnections, .overflowPending, .overflowRequests, .rateLimited: return 8  // RESOURCE_EXHAUSTED
        case .upstreamProtocol: return 13  // INTERNAL
        case .badRequest, .headersTooLarge, .uriTooLong: return 13  // INTERNAL
        case .sourceNotAllowed, .destinationNotAllowed, .forbidden: return 7  // PERMISSION_DENIED
        }
    }
}
