import MeshCore

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#elseif canImport(Darwin)
    import Darwin
#endif

/// libFuzzer targets for MeshCore's parsers and matchers: every byte a client or an operator controls
/// passes through one of them. `FUZZ_TARGET` (config, detect, target, route, headers) picks the target;
/// `scripts/fuzz.sh` builds this with `-sanitize=fuzzer,address` and runs each with its seed corpus in
/// `Fuzz/corpus/<target>`. Besides crashes, each target checks invariants of its results.
enum FuzzTarget: String {
    case config, detect, target, route, headers

    static let current: FuzzTarget = {
        guard let name = getenv("FUZZ_TARGET").map({ String(cString: $0) }), let t = FuzzTarget(rawValue: name) else {
            fatalError("set FUZZ_TARGET to one of config, detect, target, route, headers")
        }
        return t
    }()
}

/// libFuzzer's driver (SwiftPM links an executable's entry point as `<module>_main`; libFuzzer's own
/// `main` is not used).
@_silgen_name("LLVMFuzzerRunDriver")
func runFuzzerDriver(
    _ argc: UnsafeMutablePointer<CInt>,
    _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>,
    _ callback: @convention(c) (UnsafePointer<UInt8>?, Int) -> CInt
) -> CInt

@_cdecl("MeshFuzz_main")
func fuzzMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    var argc = argc
    var argv = argv
    return runFuzzerDriver(&argc, &argv, fuzzOne)
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOne(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let bytes = UnsafeBufferPointer(start: data, count: size)
    switch FuzzTarget.current {
    case .config: fuzzConfig(bytes)
    case .detect: fuzzDetect(bytes)
    case .target: fuzzTarget(String(decoding: bytes, as: UTF8.self))
    case .route: fuzzRoute(String(decoding: bytes, as: UTF8.self))
    case .headers: fuzzHeaders(String(decoding: bytes, as: UTF8.self))
    }
    return 0
}

/// Config files and discovery files: decoded and validated, never a crash, and every problem has a
/// bounded message.
func fuzzConfig(_ bytes: UnsafeBufferPointer<UInt8>) {
    let text = String(decoding: bytes, as: UTF8.self)
    do {
        _ = try ConfigLoader.load(yaml: text)
    } catch {
        for p in error.problems { check(p.description.utf8.count < 4096, "problem message not clipped") }
    }
    _ = try? ConfigLoader.loadEndpoints(yaml: text)
}

/// The first bytes of a connection.
func fuzzDetect(_ bytes: UnsafeBufferPointer<UInt8>) {
    let first = ProtocolDetection.classify(bytes)
    // More bytes never change a decision already made.
    if let first, bytes.count > 1 {
        var longer = Array(bytes)
        longer.append(contentsOf: [0x0D, 0x0A])
        check(ProtocolDetection.classify(longer) == first, "detection changed with more bytes")
    }
}

/// Request targets, authorities, addresses, durations, gRPC headers.
func fuzzTarget(_ text: String) {
    let s = Substring(text)
    if let (host, rest) = RequestTarget.splitAbsoluteForm(s) {
        // Bytes: a combining mark after "/" makes one Character of the two.
        check(!host.utf8.contains(UInt8(ascii: "/")) && !host.utf8.contains(UInt8(ascii: "?")), "authority with a path")
        check(rest.utf8.first == UInt8(ascii: "/"), "path not starting with /")
    }
    let host = RouteTable.hostWithoutPort(s)
    check(host.startIndex >= s.startIndex && host.endIndex <= s.endIndex, "host not inside the authority")
    check(!host.hasPrefix("[") || !host.hasSuffix("]") || host.count < 2, "brackets kept around an IPv6 host")
    if case .success(let hp) = HostPort.parse(text) { check((1...65535).contains(hp.port), "port out of range") }
    _ = IPAddress(text)
    _ = CIDR(text)
    if let d = MeshDuration.parse(text) { check(d.nanoseconds >= 0, "negative duration") }
    if let t = GRPC.parseTimeout(text) { check(t.nanoseconds >= 0, "negative grpc-timeout") }
    _ = GRPC.status(text)
    let encoded = GRPC.percentEncode(text)
    check(encoded.utf8.allSatisfy { $0 >= 0x20 && $0 < 0x7F }, "grpc-message not printable ASCII")
}

/// Route matching on a fixed table: host, path, method and one header, from four lines.
func fuzzRoute(_ text: String) {
    let parts = text.split(separator: "\n", maxSplits: 3, omittingEmptySubsequences: false)
    func part(_ i: Int) -> Substring { i < parts.count ? parts[i] : "" }
    let route = fuzzRoutes.match(
        host: RouteTable.hostWithoutPort(part(0)), path: part(1), method: String(part(2)),
        header: { $0 == "x-canary" ? String(part(3)) : nil })
    if let route {
        var rng = SplitMix64(seed: UInt64(text.utf8.count))
        check(RouteTable.pickBackend(route, using: &rng) != nil, "matched route without a backend")
    }
}

let fuzzRoutes: RouteTable = {
    let yaml = """
        services: [ {name: a, endpoints: ["127.0.0.1:1"]}, {name: b, endpoints: ["127.0.0.1:2"]} ]
        routes:
          - { match: { authority: "*.example.com", pathPrefix: /api, method: POST }, service: a }
          - { match: { authority: web, headers: { x-canary: "1" } }, backends: [ {service: a, weight: 1}, {service: b, weight: 9} ] }
          - { match: { authority: "*" }, service: b }
        """
    let config = try! ConfigLoader.load(yaml: yaml)
    return RouteTable(routes: config.routes, serviceIndex: ["a": 0, "b": 1], defaultTimeout: .seconds(1))
}()

/// Header policy: Connection lists, X-Forwarded-For, token lists, hop-by-hop names, local replies.
func fuzzHeaders(_ text: String) {
    let values = text.split(separator: "\n").map(String.init)
    let names = HeaderPolicy.namesToRemove(connectionHeaderValues: values)
    for n in names { check(n == n.lowercased(), "header name not lowercased") }
    let xff = HeaderPolicy.appendingForwardedFor(existing: values.first, client: "10.0.0.1")
    check(xff.hasSuffix("10.0.0.1"), "client not appended")
    _ = HeaderPolicy.listContains(text, token: "upgrade")
    _ = HeaderPolicy.isHopByHop(text)
    let reply = LocalReply.error(.badRequest, detail: text, grpc: true, http2: true, close: false)
    for f in reply.headers { check(!f.value.contains("\n") && !f.value.contains("\r"), "CR/LF in a reply header") }
}

func check(_ condition: Bool, _ message: String) {
    if !condition { fatalError("fuzz invariant: \(message)") }
}
