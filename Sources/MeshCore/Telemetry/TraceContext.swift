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
    /// The 32-hex trace id of the request's `traceparent` (the client's, or the one meshd adds): a
    /// slice of that field's value, not a copy of its bytes.
    public var traceID: Substring
    /// Set when meshd adds an `x-request-id` header.
    public var addRequestID: String?
    /// Set when meshd adds (or, for a malformed one, replaces) the `traceparent` header.
    public var setTraceparent: String?
    /// The request's `traceparent` was malformed: it and `tracestate` are removed before
    /// `setTraceparent` is added.
    public var dropMalformed: Bool

    /// What the request's headers carry, as `HTTPHeaders.meshScan` collects it (first of each).
    public struct Incoming: Sendable, Equatable {
        /// The field's own value (a `String`: kept as the request's id without a copy).
        public var requestID: String?
        public var traceparent: Substring?
        /// The `b3` single header.
        public var b3: Substring?
        /// `x-b3-traceid` and `x-b3-sampled`.
        public var b3TraceID: Substring?
        public var b3Sampled: Substring?
        public init(
            requestID: String? = nil, traceparent: Substring? = nil, b3: Substring? = nil, b3TraceID: Substring? = nil,
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
            requestID = id
        } else {
            requestID = newRequestID(rng: &rng)
            addRequestID = requestID
        }
        if let tp = incoming.traceparent, let parsed = Traceparent(tp) {
            return TraceDecision(
                requestID: requestID, traceID: parsed.traceID, addRequestID: addRequestID, setTraceparent: nil,
                dropMalformed: false)
        }
        let b3 = incoming.b3.flatMap(B3.single) ?? incoming.b3TraceID.flatMap { B3.multi(traceID: $0, sampled: incoming.b3Sampled) }
        let flags: StaticString = (b3?.sampled ?? false) ? "01" : "00"
        let header: String
        var idCount = 32
        if let b3 {
            header = traceparent(traceID: b3.traceID, parentID: rng.next() | 1, flags: flags)
            idCount = b3.traceID.utf8.count
        } else {
            let high = rng.next()
            let low = rng.next()
            header = traceparent(traceID: (high, low), parentID: rng.next() | 1, flags: flags)
        }
        // The trace id as a slice of the new header, after `00-`.
        let utf8 = header.utf8
        let traceID = header[utf8.index(utf8.startIndex, offsetBy: 3)..<utf8.index(utf8.startIndex, offsetBy: 3 + idCount)]
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
        traceID.meshWithUTF8 { idBytes in
            traceparent(idCount: idBytes.count, parentID: parentID, flags: flags) { out in
                for (i, b) in idBytes.enumerated() { out[3 + i] = b }
            }
        }
    }

    /// The same with a new trace id, `high` then `low` as 32 hex digits written in place.
    static func traceparent(traceID: (high: UInt64, low: UInt64), parentID: UInt64, flags: StaticString) -> String {
        traceparent(idCount: 32, parentID: parentID, flags: flags) { out in
            var shift: UInt64 = 60
            for i in 0..<16 {
                out[3 + i] = hexDigit(traceID.high >> shift)
                out[19 + i] = hexDigit(traceID.low >> shift)
                shift &-= 4
            }
        }
    }

    /// `00-`, `idCount` bytes that `writeID` puts at offsets 3..., `-PARENTID-FLAGS`.
    @inline(__always)
    static func traceparent(
        idCount: Int, parentID: UInt64, flags: StaticString, writeID: (UnsafeMutableBufferPointer<UInt8>) -> Void
    ) -> String {
        String(unsafeUninitializedCapacity: 3 + idCount + 18 + flags.utf8CodeUnitCount) { out in
            out[0] = UInt8(ascii: "0")
            out[1] = UInt8(ascii: "0")
            out[2] = UInt8(ascii: "-")
            writeID(out)
            var i = 3 + idCount
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

    /// The lower-case hex digit of `value`'s low four bits (arithmetic: no table, no array access per
    /// digit on the request path).
    @inline(__always)
    static func hexDigit(_ value: UInt64) -> UInt8 {
        let d = UInt8(truncatingIfNeeded: value & 0xF)
        return d < 10 ? 0x30 + d : 0x57 + d
    }
}

/// A parsed W3C `traceparent` (Trace Context Level 1, §3.2): `VV-TRACEID-PARENTID-FF`, lower-case hex.
/// Version `ff` is invalid; a version above `00` may carry more fields after a dash.
///
/// Parsed on the UTF-8 bytes at the fixed offsets the format has: every request between meshd (and
/// every traced request) carries one, and a `Character`-level split of its 55 bytes cost about
/// 26 k instructions per request.
public struct Traceparent: Sendable, Equatable {
    public var version: Substring
    public var traceID: Substring
    public var parentID: Substring
    public var flags: Substring

    /// The length of a version-00 value, and where a later version's further fields start (after a dash).
    static let length = 55

    public init?(_ value: Substring) {
        let valid =
            value.utf8.withContiguousStorageIfAvailable { Self.isValid($0) }
            ?? Array(value.utf8).withUnsafeBufferPointer { Self.isValid($0) }
        guard valid else { return nil }
        let u = value.utf8
        func at(_ offset: Int) -> String.Index { u.index(u.startIndex, offsetBy: offset) }
        self.version = value[at(0)..<at(2)]
        self.traceID = value[at(3)..<at(35)]
        self.parentID = value[at(36)..<at(52)]
        self.flags = value[at(53)..<at(55)]
    }

    /// `VV-` (2 hex, not `ff`), 32 hex (not all zero), `-`, 16 hex (not all zero), `-`, 2 hex; then the
    /// end, or (for a version above `00`) a dash and anything.
    static func isValid(_ b: UnsafeBufferPointer<UInt8>) -> Bool {
        let dash = UInt8(ascii: "-")
        let zero = UInt8(ascii: "0")
        guard b.count >= length, b[2] == dash, b[35] == dash, b[52] == dash else { return false }
        guard isHex(b[0]), isHex(b[1]), !(b[0] == UInt8(ascii: "f") && b[1] == UInt8(ascii: "f")) else { return false }
        if b[0] == zero && b[1] == zero {
            guard b.count == length else { return false }
        } else if b.count > length {
            guard b[length] == dash else { return false }
        }
        var traceZero = true
        for i in 3..<35 {
            guard isHex(b[i]) else { return false }
            traceZero = traceZero && b[i] == zero
        }
        var parentZero = true
        for i in 36..<52 {
            guard isHex(b[i]) else { return false }
            parentZero = parentZero && b[i] == zero
        }
        return !traceZero && !parentZero && isHex(b[53]) && isHex(b[54])
    }

    /// A lower-case hex digit (the spec forbids upper case).
    @inline(__always)
    static func isHex(_ c: UInt8) -> Bool {
        c &- UInt8(ascii: "0") < 10 || c &- UInt8(ascii: "a") < 6
    }

    /// Lower-case hex digits only.
    static func isHex(_ s: Substring) -> Bool {
        s.utf8.allSatisfy { isHex($0) }
    }
}

/// The trace id of Zipkin's B3 headers, as a 32-hex W3C trace id. On the UTF-8 bytes, like
/// `Traceparent`.
enum B3 {
    struct Found: Equatable {
        var traceID: String
        var sampled: Bool?
    }

    /// `b3: TRACEID-SPANID[-SAMPLED[-PARENTSPANID]]`; a bare `0`, `1` or `d` carries no trace id.
    static func single(_ value: Substring) -> Found? {
        let u = value.utf8
        // The first three dash-separated parts (the parent span id is not used).
        guard let dash1 = u.firstIndex(of: UInt8(ascii: "-")) else { return nil }
        let spanStart = u.index(after: dash1)
        let dash2 = u[spanStart...].firstIndex(of: UInt8(ascii: "-"))
        let span = value[spanStart..<(dash2 ?? u.endIndex)]
        guard let trace = traceID(value[..<dash1]), span.utf8.count == 16, Traceparent.isHex(span) else { return nil }
        var sampledPart: Substring?
        if let dash2 {
            let start = u.index(after: dash2)
            sampledPart = value[start..<(u[start...].firstIndex(of: UInt8(ascii: "-")) ?? u.endIndex)]
        }
        return Found(traceID: trace, sampled: sampledPart.flatMap(sampled))
    }

    /// `x-b3-traceid` (16 or 32 hex) with `x-b3-sampled`.
    static func multi(traceID value: Substring, sampled: Substring?) -> Found? {
        guard let trace = traceID(value) else { return nil }
        return Found(traceID: trace, sampled: sampled.flatMap(Self.sampled))
    }

    /// 16 or 32 hex digits of either case, not all zero: as 32 lower-case digits (a 64-bit id
    /// left-padded with zeros).
    static func traceID(_ s: Substring) -> String? {
        let u = s.utf8
        let count = u.count
        guard count == 16 || count == 32 else { return nil }
        var nonZero = false
        for c in u {
            guard Traceparent.isHex(lower(c)) else { return nil }
            nonZero = nonZero || c != UInt8(ascii: "0")
        }
        guard nonZero else { return nil }
        return String(unsafeUninitializedCapacity: 32) { out in
            var i = 0
            while i < 32 - count {
                out[i] = UInt8(ascii: "0")
                i += 1
            }
            for c in u {
                out[i] = lower(c)
                i += 1
            }
            return 32
        }
    }

    /// `A`–`F` as `a`–`f`; any other byte as it is.
    @inline(__always)
    static func lower(_ c: UInt8) -> UInt8 { c &- UInt8(ascii: "A") < 6 ? c | 0x20 : c }

    static func sampled(_ s: Substring) -> Bool? {
        switch s {
        case "1", "d", "true": return true
        case "0", "false": return false
        default: return nil
        }
    }
}
