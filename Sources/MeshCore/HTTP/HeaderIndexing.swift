/// Whether HPACK may add a header meshd sends on HTTP/2 to the connection's dynamic table
/// (RFC 7541 §6.2): a header is worth indexing when its value comes back on later requests of the
/// connection. A value that is new on every request (a request id, a trace context, a path with an id
/// in it) evicts useful entries, fills the table with entries nothing will match, and makes every
/// later lookup in it longer — for the encoder (meshd) and for the peer's decoder.
///
/// The policy is nghttp2's (`hd_deflate_should_indexing`), which curl, h2load and Apache use, plus the
/// per-request tracing headers meshd itself sets:
/// - never indexed (`neverIndex`, RFC 7541 §7.1.3, also by any proxy after meshd): `authorization`,
///   and `cookie` values shorter than 20 bytes (guessable by compression side channels);
/// - not indexed (`noIndex`): `:path`, `age`, `content-length`, `etag`, `if-modified-since`,
///   `if-none-match`, `location`, `set-cookie`, the tracing headers (`x-request-id`, `traceparent`,
///   `tracestate`, `b3`, `x-b3-traceid`, `x-b3-spanid`, `x-b3-parentspanid`), `grpc-timeout`, and any
///   header whose entry would take more than three quarters of the table;
/// - everything else indexed.
///
/// A header sent without indexing still names an entry of either table when one has its name
/// (RFC 7541 §6.2.2), so only its value is spelled out. The tracing headers and `grpc-timeout` are
/// not in the static table: with `primeNames` (`HeaderNamePriming` says when) they are indexed, and
/// the requests that follow on the connection find their names in the dynamic table instead of
/// spelling (and Huffman-coding) them again.
public enum HeaderIndexing: Equatable, Sendable {
    case index
    case noIndex
    case neverIndex

    /// HPACK's default (and usual) dynamic table size, SETTINGS_HEADER_TABLE_SIZE.
    public static let defaultTableSize = 4096

    /// The indexing for the (lowercase, as HTTP/2 requires) header `name` with a value of
    /// `valueLength` bytes, for a dynamic table of `tableSize` bytes; `primeNames`: a per-request header
    /// whose name the static table lacks is indexed, for its name.
    public static func of(
        name: String, valueLength: Int, tableSize: Int = defaultTableSize, primeNames: Bool = false
    ) -> HeaderIndexing {
        let n = name.utf8.count
        // An entry's size is its name and value plus 32 (RFC 7541 §4.1).
        if n + valueLength + 32 > tableSize * 3 / 4 { return .noIndex }
        // Per stream, for every header sent: the length and the first byte rule out almost every name
        // before a comparison.
        guard let c = name.utf8.first.map({ $0 | 0x20 }) else { return .index }
        func eq(_ s: String) -> Bool { HeaderPolicy.equalsIgnoringASCIICase(name, s) }
        // Not indexed, and not a name of the static table.
        let perRequest: HeaderIndexing = primeNames ? .index : .noIndex
        switch (n, c) {
        case (2, UInt8(ascii: "b")): return eq("b3") ? perRequest : .index
        case (3, UInt8(ascii: "a")): return eq("age") ? .noIndex : .index
        case (4, UInt8(ascii: "e")): return eq("etag") ? .noIndex : .index
        case (5, UInt8(ascii: ":")): return eq(":path") ? .noIndex : .index
        case (6, UInt8(ascii: "c")): return eq("cookie") && valueLength < 20 ? .neverIndex : .index
        case (8, UInt8(ascii: "l")): return eq("location") ? .noIndex : .index
        case (10, UInt8(ascii: "s")): return eq("set-cookie") ? .noIndex : .index
        case (10, UInt8(ascii: "t")): return eq("tracestate") ? perRequest : .index
        case (11, UInt8(ascii: "t")): return eq("traceparent") ? perRequest : .index
        case (11, UInt8(ascii: "x")): return eq("x-b3-spanid") ? perRequest : .index
        case (12, UInt8(ascii: "x")): return eq("x-request-id") || eq("x-b3-traceid") ? perRequest : .index
        case (12, UInt8(ascii: "g")): return eq("grpc-timeout") ? perRequest : .index
        case (13, UInt8(ascii: "a")): return eq("authorization") ? .neverIndex : .index
        case (13, UInt8(ascii: "i")): return eq("if-none-match") ? .noIndex : .index
        case (14, UInt8(ascii: "c")): return eq("content-length") ? .noIndex : .index
        case (17, UInt8(ascii: "i")): return eq("if-modified-since") ? .noIndex : .index
        case (17, UInt8(ascii: "x")): return eq("x-b3-parentspanid") ? perRequest : .index
        default: return .index
        }
    }
}

/// When a connection's request indexes its per-request headers for their names
/// (`HeaderIndexing.of(…, primeNames: true)`): the connection's first request, and every
/// `interval`-th after it, so that a name other entries pushed out of the table comes back. Between
/// two, such a header costs its value only, while its name stays in the table.
public struct HeaderNamePriming: Equatable, Sendable {
    /// Requests per priming: 64 requests' worth of one table entry per name (about 80 bytes for an
    /// `x-request-id`) against spelling the names on every request.
    public static let interval = 64
    private var count = 0

    public init() {}

    /// Whether the next request primes the names; counts it.
    public mutating func next() -> Bool {
        defer { count = count + 1 == Self.interval ? 0 : count + 1 }
        return count == 0
    }
}
