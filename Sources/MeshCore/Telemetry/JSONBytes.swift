/// JSON text written as UTF-8 bytes straight into a buffer: the access log writes a line per request
/// this way, with no intermediate `String` per field. (Building the line as a `String`, one
/// interpolation and one escaped copy per field, cost 60 k instructions per request — callgrind,
/// 2026-12-05 — more than proxying the request.)
public enum JSONBytes {
    /// `s` as a JSON string literal: `"`, `\` and the control characters escaped (`\n`, `\r`, `\t`,
    /// else `\u00XX`), every other byte of its UTF-8 as it is (`JSONValue.quote` uses it).
    public static func appendQuoted(_ s: String, to out: inout [UInt8]) {
        s.meshWithUTF8 { appendQuoted(bytes: $0, to: &out) }
    }

    public static func appendQuoted(_ s: Substring, to out: inout [UInt8]) {
        s.meshWithUTF8 { appendQuoted(bytes: $0, to: &out) }
    }

    public static func appendQuoted(bytes: UnsafeBufferPointer<UInt8>, to out: inout [UInt8]) {
        out.append(UInt8(ascii: "\""))
        var run = 0
        for i in 0..<bytes.count {
            let c = bytes[i]
            guard c < 0x20 || c == UInt8(ascii: "\"") || c == UInt8(ascii: "\\") else { continue }
            out.append(contentsOf: UnsafeBufferPointer(rebasing: bytes[run..<i]))
            run = i + 1
            out.append(UInt8(ascii: "\\"))
            switch c {
            case UInt8(ascii: "\""), UInt8(ascii: "\\"): out.append(c)
            case UInt8(ascii: "\n"): out.append(UInt8(ascii: "n"))
            case UInt8(ascii: "\r"): out.append(UInt8(ascii: "r"))
            case UInt8(ascii: "\t"): out.append(UInt8(ascii: "t"))
            default:
                out.append(contentsOf: [UInt8(ascii: "u"), UInt8(ascii: "0"), UInt8(ascii: "0"), hexDigit(c >> 4), hexDigit(c & 0xF)])
            }
        }
        out.append(contentsOf: UnsafeBufferPointer(rebasing: bytes[run...]))
        out.append(UInt8(ascii: "\""))
    }

    /// ASCII text (a field name, a fixed label) as it is.
    public static func appendRaw(_ s: StaticString, to out: inout [UInt8]) {
        out.append(contentsOf: UnsafeBufferPointer(start: s.utf8Start, count: s.utf8CodeUnitCount))
    }

    /// A string known to need no escaping (hex digits, a fixed label), without quotes.
    public static func appendRaw(_ s: String, to out: inout [UInt8]) {
        out.append(contentsOf: s.utf8)
    }

    /// An integer in decimal.
    public static func appendDecimal(_ value: Int64, to out: inout [UInt8]) {
        if value < 0 { out.append(UInt8(ascii: "-")) }
        var v = value.magnitude
        // 20 digits hold UInt64.max.
        withUnsafeTemporaryAllocation(of: UInt8.self, capacity: 20) { digits in
            var n = 0
            repeat {
                digits[19 - n] = UInt8(ascii: "0") + UInt8(v % 10)
                v /= 10
                n += 1
            } while v > 0
            out.append(contentsOf: UnsafeBufferPointer(rebasing: digits[(20 - n)...]))
        }
    }

    public static func appendDecimal(_ value: Int, to out: inout [UInt8]) { appendDecimal(Int64(value), to: &out) }

    /// A duration in nanoseconds as milliseconds, exactly: the integer part, a point and up to six
    /// decimals without trailing zeros (at least one): `115.20882`, `3.0`, `0.00005`.
    public static func appendMilliseconds(nanoseconds: Int64, to out: inout [UInt8]) {
        if nanoseconds < 0 { out.append(UInt8(ascii: "-")) }
        let n = nanoseconds.magnitude
        appendDecimal(Int64(n / 1_000_000), to: &out)
        out.append(UInt8(ascii: "."))
        var fraction = n % 1_000_000
        var digits = 6
        while digits > 1 && fraction % 10 == 0 {
            fraction /= 10
            digits -= 1
        }
        var scale: UInt64 = 1
        for _ in 1..<digits { scale *= 10 }
        for _ in 0..<digits {
            out.append(UInt8(ascii: "0") + UInt8(fraction / scale))
            fraction %= scale
            scale /= 10
        }
    }

    @inline(__always)
    static func hexDigit(_ v: UInt8) -> UInt8 { v < 10 ? UInt8(ascii: "0") + v : UInt8(ascii: "a") + v - 10 }
}
