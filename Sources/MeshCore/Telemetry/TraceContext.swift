/// Request identity and trace context for one request (W3C Trace Context, B3, `x-request-id`).
///
/// meshd propagates what a request carries unchanged, end to end: `traceparent`, `tracestate`, `b3`
/// and `x-b3-*` pass through every hop untouched. What it adds when missing, so that every access-log
/// line names a request and a trace:
/// - `x-request-id`: a random UUID (version 4) when the request has none (Envoy's behaviour).
/// - `traceparent`: a new one when the request has none, or when the one it has is malformed (W3C
///   §4.3: the receiver restarts the trace; the malformed header and its `tracestate` are dropped).
///   Its trace id is the B3 trace id when the request carries B3 headers (a 64-bit B3 id is
///   left-padded with zeros), so one trace keeps one id in both formats; otherwise a random one. Its
///   sampled flag follows B3's when B3 said, else it is off (meshd records no span itself).
public struct TraceDecision: Sendable, Equatable {
    /// The request id of the request (the client's, or the one meshd adds).
    public var requestID: String
    /// The 32-hex trace id of the request's `traceparent` (the client's, or the one meshd adds).
    public var traceID: String
    /// Set when meshd adds an `x-request-id` header.
    public var addRequestID: String?
    /// Set when meshd adds (or, for a malformed one, replaces) the `traceparent` header.
    public var setTraceparent: String?
    /// The request's `traceparent` was malformed: it and `tracestate` are removed before
    /// `setTraceparent` is added.
    public var dropMalformed: Bool

    /// What the request's headers carry, as `HTTPHeaders.meshScan` collects it (first of each).
    public struct Incoming: Sendable, Equatable {
        public var requestID: Substring?
        public var traceparent: Substring?
        /// The `b3` single header.
        public var b3: Substring?
        /// `x-b3-traceid` and `x-b3-sampled`.
        public var b3TraceID: Substring?
        public var b3Sampled: Substring?
        public init(
            requestID: Substring? = nil, traceparent: Substring? = nil, b3: Substring? = nil, b3TraceID: Substring? = nil,
            b3Sampled: Substring? = nil
        ) {
            self.requestID = requestID
            self.traceparent = traceparent
            self.b3 = b3
            self.b3TraceID = b3TraceID
            self.b3Sampled = b3Sampled
        }
    }

    /// Longest `x-request-id` taken as it is; a longer (or empty) one is replaced by a new id.
    public static let maxRequestIDBytes = 256

    public static func decide(_ incoming: Incoming, rng: inout some RandomNumberGenerator) -> TraceDecision {
        var requestID: String
        var addRequestID: String?
        if let id = incoming.requestID, !id.isEmpty, id.utf8.count <= maxRequestIDBytes {
            requestID = String(id)
        } else {
            requestID = newRequestID(rng: &rng)
            addRequestID = requestID
        }
        if let tp = incoming.traceparent, let parsed = Traceparent(tp) {
            return TraceDecision(
                requestID: requestID, traceID: String(parsed.traceID), addRequestID: addRequestID, setTraceparent: nil,
                dropMalformed: false)
        }
        let b3 = incoming.b3.flatMap(B3.single) ?? incoming.b3TraceID.flatMap { B3.multi(traceID: $0, sampled: incoming.b3Sampled) }
        let traceID = b3?.traceID ?? hex(rng.next(), rng.next())
        let flags: StaticString = (b3?.sampled ?? false) ? "01" : "00"
        let header = traceparent(traceID: traceID, parentID: rng.next() | 1, flags: flags)
        return TraceDecision(
            requestID: requestID, traceID: traceID, addRequestID: addRequestID, setTraceparent: header,
            dropMalformed: incoming.traceparent != nil)
    }

    /// A random UUID, version 4, variant 1 (RFC 9562), lower-case: 8-4-4-4-12 hex digits.
    public static func newRequestID(rng: inout some RandomNumberGenerator) -> String {
        let hi = (rng.next() & 0xFFFF_FFFF_FFFF_0FFF) | 0x0000_0000_0000_4000
        let lo = (rng.next() & 0x3FFF_FFFF_FFFF_FFFF) | 0x8000_0000_0000_0000
        return String(unsafeUninitializedCapacity: 36) { out in
            var i = 0
            // `count` hex digits of `word`, from nibble `first` (0 = the most significant).
            func digits(_ word: UInt64, _ first: Int, _ count: Int) {
                var shift = UInt64(60 - 4 * first)
                for _ in 0..<count {
                    out[i] = hexDigit(word >> shift)
                    shift &-= 4
                    i += 1
                }
            }
            func dash() {
                out[i] = UInt8(ascii: "-")
                i += 1
            }
            digits(hi, 0, 8)
            dash()
            digits(hi, 8, 4)
            dash()
            digits(hi, 12, 4)
            dash()
            digits(lo, 0, 4)
            dash()
            digits(lo, 4, 12)
            return i
        }
    }

    /// `00-TRACEID-PARENTID-FLAGS` in one allocation; the trace id's bytes copied in place.
    static func traceparent(traceID: String, parentID: UInt64, flags: StaticString) -> String {
        var id = traceID
        return id.withUTF8 { idBytes in
            String(unsafeUninitializedCapacity: 3 + idBytes.count + 18 + flags.utf8CodeUnitCount) { out in
                out[0] = UInt8(ascii: "0")
                out[1] = UInt8(ascii: "0")
                out[2] = UInt8(ascii: "-")
                var i = 3
                for b in idBytes {
                    out[i] = b
                    i += 1
                }
                out[i] = UInt8(ascii: "-")
                i += 1
                var shift: UInt64 = 60
                for _ in 0..<16 {
                    out[i] = hexDigit(parentID >> shift)
                    shift &-= 4
                    i += 1
                }
                out[i] = UInt8(ascii: "-")
                i += 1
                flags.withUTF8Buffer { bytes in
                    for b in bytes {
                        out[i] = b
                        i += 1
                    }
                }
                return i
            }
        }
    }

    /// The lower-case hex digit of `value`'s low four bits (arithmetic: no table, no array access per
    /// digit on the request path).
    @inline(__always)
    static func hexDigit(_ value: UInt64) -> UInt8 {
        let d = UInt8(truncatingIfNeeded: value & 0xF)
        return d < 10 ? 0x30 + d : 0x57 + d
    }

    /// Each word as 16 lower-case hex digits.
    static func hex(_ words: UInt64...) -> String {
        String(unsafeUninitializedCapacity: words.count * 16) { out in
            var i = 0
            for w in words {
                for n in 0..<16 {
                    out[i] = hexDigit(w >> UInt64(60 - 4 * n))
                    i += 1
                }
            }
            return i
        }
    }
}

/// A parsed W3C `traceparent` (Trace Context Level 1, §3.2): `VV-TRACEID-PARENTID-FF`, lower-case hex.
/// Version `ff` is invalid; a version above `00` may carry more fields after a dash.
public struct Traceparent: Sendable, Equatable {
    public var version: Substring
    public var traceID: Substring
    public var parentID: Substring
    public var flags: Substring

    public init?(_ value: Substring) {
        let v = value.utf8
        guard v.count >= 55 else { return nil }
        let parts = value.split(separator: "-", maxSplits: 4, omittingEmptySubsequences: false)
        guard parts.count >= 4 else { return nil }
        let (version, trace, parent, flags) = (parts[0], parts[1], parts[2], parts[3])
        guard version.utf8.count == 2, Self.isHex(version), version != "ff" else { return nil }
        // Version 00 has exactly these four fields; a later version may append more.
        if version == "00" && (parts.count != 4 || v.count != 55) { return nil }
        guard trace.utf8.count == 32, Self.isHex(trace), trace.utf8.contains(where: { $0 != UInt8(ascii: "0") }) else { return nil }
        guard parent.utf8.count == 16, Self.isHex(parent), parent.utf8.contains(where: { $0 != UInt8(ascii: "0") }) else {
            return nil
        }
        guard flags.utf8.count == 2, Self.isHex(flags) else { return nil }
        self.version = version
        self.traceID = trace
        self.parentID = parent
        self.flags = flags
    }

    /// Lower-case hex digits only (the spec forbids upper case).
    static func isHex(_ s: Substring) -> Bool {
        s.utf8.allSatisfy { ($0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9")) || ($0 >= UInt8(ascii: "a") && $0 <= UInt8(ascii: "f")) }
    }
}

/// The trace id of Zipkin's B3 headers, as a 32-hex W3C trace id.
enum B3 {
    struct Found: Equatable {
        var traceID: String
        var sampled: Bool?
    }

    /// `b3: TRACEID-SPANID[-SAMPLED[-PARENTSPANID]]`; a bare `0`, `1` or `d` carries no trace id.
    static func single(_ value: Substring) -> Found? {
        let parts = value.split(separator: "-", omittingEmptySubsequences: false)
        guard parts.count >= 2, let trace = traceID(parts[0]), parts[1].utf8.count == 16, Traceparent.isHex(parts[1]) else {
            return nil
        }
        return Found(traceID: trace, sampled: parts.count >= 3 ? sampled(parts[2]) : nil)
    }

    /// `x-b3-traceid` (16 or 32 hex) with `x-b3-sampled`.
    static func multi(traceID value: Substring, sampled: Substring?) -> Found? {
        guard let trace = traceID(value) else { return nil }
        return Found(traceID: trace, sampled: sampled.flatMap(Self.sampled))
    }

    static func traceID(_ s: Substring) -> String? {
        let lower = Substring(s.lowercased())
        guard lower.utf8.count == 16 || lower.utf8.count == 32, Traceparent.isHex(lower),
            lower.utf8.contains(where: { $0 != UInt8(ascii: "0") })
        else { return nil }
        return lower.utf8.count == 16 ? String(repeating: "0", count: 16) + lower : String(lower)
    }

    static func sampled(_ s: Substring) -> Bool? {
        switch s {
        case "1", "d", "true": return true
        case "0", "false": return false
        default: return nil
        }
    }
}
