/// The request target (RFC 9112 §3.2): what the logical step routes on.
public enum RequestTarget {
    /// `http://host:port/path?q` → (`host:port`, `/path?q`); nil when `uri` is not absolute-form.
    public static func splitAbsoluteForm(_ uri: Substring) -> (Substring, Substring)? {
        let bytes = uri.utf8
        var i = bytes.startIndex
        // scheme ":" "//"
        while i != bytes.endIndex, bytes[i] != UInt8(ascii: ":") {
            let c = bytes[i]
            let ok = (c >= 97 && c <= 122) || (c >= 65 && c <= 90) || (c >= 48 && c <= 57) || c == 43 || c == 45 || c == 46
            if !ok { return nil }
            i = bytes.index(after: i)
        }
        guard i != bytes.endIndex else { return nil }
        let afterColon = bytes.index(after: i)
        guard bytes[afterColon...].starts(with: "//".utf8) else { return nil }
        let hostStart = bytes.index(afterColon, offsetBy: 2)
        let slash = bytes[hostStart...].firstIndex(where: { $0 == UInt8(ascii: "/") || $0 == UInt8(ascii: "?") }) ?? bytes.endIndex
        let host = uri[hostStart..<slash]
        let rest = uri[slash...]
        // Bytes, not Characters: a combining mark after "/" or "?" makes one Character of the two.
        return (host, rest.isEmpty ? "/" : (rest.utf8.first == UInt8(ascii: "?") ? Substring("/" + rest) : rest))
    }
}
