import Testing

@testable import MeshCore

@Suite("JSON written as bytes")
struct JSONBytesTests {
    func quoted(_ s: String) -> String {
        var out: [UInt8] = []
        JSONBytes.appendQuoted(s, to: &out)
        return String(decoding: out, as: UTF8.self)
    }

    /// A reference written scalar by scalar, independently of the byte-level escaper.
    static func reference(_ s: String) -> String {
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

    /// The same text as the scalar-by-scalar reference (and `JSONValue.quoted`, which now uses it),
    /// over fixed and seeded random strings of ASCII, control characters, quotes, backslashes and
    /// multi-byte characters.
    @Test func quotingMatchesJSONValue() {
        for s in ["", "plain", "a\"b", "back\\slash", "line\nfeed\r\t", "\u{0}\u{1}\u{1f}\u{7f}", "héllo ✓ 🚀", "\"\\\""] {
            #expect(quoted(s) == Self.reference(s) && JSONValue.quoted(s) == Self.reference(s), "\(s)")
        }
        var rng = SplitMix64(seed: 3)
        let alphabet: [Character] = ["a", "Z", "0", " ", "\"", "\\", "\n", "\r", "\t", "\u{0}", "\u{8}", "\u{1b}", "é", "✓", "🚀", "/"]
        for _ in 0..<5000 {
            let s = String((0..<Int.random(in: 0...20, using: &rng)).map { _ in alphabet[Int.random(in: 0..<alphabet.count, using: &rng)] })
            #expect(quoted(s) == Self.reference(s) && JSONValue.quoted(s) == Self.reference(s), "\(s.debugDescription)")
        }
        var out: [UInt8] = []
        JSONBytes.appendQuoted("xa\"b".dropFirst(), to: &out)
        #expect(String(decoding: out, as: UTF8.self) == "\"a\\\"b\"")
    }

    @Test func decimals() {
        for v: Int64 in [0, 7, -7, 10, 99, 100, 1_796_454_342_835, .max, .min + 1] {
            var out: [UInt8] = []
            JSONBytes.appendDecimal(v, to: &out)
            #expect(String(decoding: out, as: UTF8.self) == String(v))
        }
    }

    /// Milliseconds from nanoseconds: the exact decimal, the same number a `Double` division gives.
    @Test func milliseconds() {
        func ms(_ n: Int64) -> String {
            var out: [UInt8] = []
            JSONBytes.appendMilliseconds(nanoseconds: n, to: &out)
            return String(decoding: out, as: UTF8.self)
        }
        #expect(ms(115_208_820) == "115.20882")
        #expect(ms(3_000_000) == "3.0")
        #expect(ms(0) == "0.0")
        #expect(ms(50) == "0.00005")
        #expect(ms(1) == "0.000001")
        #expect(ms(-1_500_000) == "-1.5")
        var rng = SplitMix64(seed: 9)
        for _ in 0..<10_000 {
            let n = Int64.random(in: 0...999_999_999_999, using: &rng)
            #expect(Double(ms(n)) == Double(n) / 1e6, "\(n)")
        }
    }
}
