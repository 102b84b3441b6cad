/// A duration as written in config: `250ms`, `1s`, `1.5s`, `2m`, `1h`, or a bare number of seconds.
public struct MeshDuration: Sendable, Hashable, Comparable, CustomStringConvertible {
    public var nanoseconds: Int64

    public init(nanoseconds: Int64) { self.nanoseconds = nanoseconds }

    public static func seconds(_ s: Int64) -> MeshDuration { MeshDuration(nanoseconds: s * 1_000_000_000) }
    public static func milliseconds(_ ms: Int64) -> MeshDuration { MeshDuration(nanoseconds: ms * 1_000_000) }

    public static func < (a: MeshDuration, b: MeshDuration) -> Bool { a.nanoseconds < b.nanoseconds }
    public static func + (a: MeshDuration, b: MeshDuration) -> MeshDuration { MeshDuration(nanoseconds: a.nanoseconds + b.nanoseconds) }

    public static func parse(_ text: String) -> MeshDuration? {
        let t = text.trimmingASCIIWhitespace()
        let units: [(String, Double)] = [("ms", 1e6), ("us", 1e3), ("ns", 1), ("s", 1e9), ("m", 60e9), ("h", 3600e9)]
        for (suffix, scale) in units where t.hasSuffix(suffix) {
            let number = t.dropLast(suffix.count)
            guard let value = Double(number), value >= 0, value.isFinite, value * scale < 9.2e18 else { return nil }
            return MeshDuration(nanoseconds: Int64(value * scale))
        }
        guard let seconds = Double(t), seconds >= 0, seconds.isFinite, seconds < 9.2e9 else { return nil }
        return MeshDuration(nanoseconds: Int64(seconds * 1e9))
    }

    public var description: String {
        if nanoseconds % 1_000_000_000 == 0 { return "\(nanoseconds / 1_000_000_000)s" }
        if nanoseconds % 1_000_000 == 0 { return "\(nanoseconds / 1_000_000)ms" }
        if nanoseconds % 1_000 == 0 { return "\(nanoseconds / 1_000)us" }
        return "\(nanoseconds)ns"
    }
}
