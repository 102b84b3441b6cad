import ArgumentParser
import Dispatch
import Foundation
import NIOCore
import NIOHTTP1
import NIOPosix

#if canImport(Glibc)
    import Glibc
#endif

/// `meshctl tap`: live requests as they pass through a running meshd (like `linkerd viz tap`),
/// streamed from its admin `GET /tap`: one line per request matching the filters, until `--max`
/// requests or Ctrl-C. meshd bounds what a tap costs it (see docs/operations.md).
struct Tap: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Watch live requests through a running meshd.")

    @OptionGroup var options: AdminOptions
    @Option(help: "Only requests to this service.") var service: String?
    @Option(help: "Only requests matched by this route.") var route: String?
    @Option(help: "Only these statuses: a class (5xx) or one status (503).") var status: String?
    @Option(help: "Only outbound or inbound requests.") var direction: String?
    @Option(help: "Stop after this many requests (1…100000).") var max: Int = 100

    func validate() throws {
        guard (1...100_000).contains(max) else { throw ValidationError("--max must be between 1 and 100000") }
        if let direction, direction != "outbound" && direction != "inbound" {
            throw ValidationError("--direction is outbound or inbound")
        }
    }

    var query: String {
        var items = ["max=\(max)"]
        func add(_ k: String, _ v: String?) {
            guard let v else { return }
            items.append("\(k)=\(v.addingPercentEncoding(withAllowedCharacters: .alphanumerics.union(["-", "_", "."])) ?? v)")
        }
        add("service", service)
        add("route", route)
        add("status", status)
        add("direction", direction)
        return items.joined(separator: "&")
    }

    func run() async throws {
        signal(SIGINT, SIG_IGN)
        let sigint = DispatchSource.makeSignalSource(signal: SIGINT, queue: .main)
        sigint.setEventHandler { Foundation.exit(0) }
        sigint.resume()
        let json = options.output == .json
        if !json {
            print(Self.header)
        }
        let parts = options.admin.split(separator: ":")
        guard parts.count >= 2, let port = Int(parts.last!) else {
            throw ValidationError("--admin must be HOST:PORT, got '\(options.admin)'")
        }
        let host = parts.dropLast().joined(separator: ":").trimmingCharacters(in: ["[", "]"])
        let group = MultiThreadedEventLoopGroup.singleton
        let done = group.next().makePromise(of: Void.self)
        let printer = LinePrinter(json: json, done: done)
        let channel: Channel
        do {
            channel = try await ClientBootstrap(group: group)
                .connectTimeout(.seconds(5))
                .channelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.addHTTPClientHandlers()
                        try channel.pipeline.syncOperations.addHandler(printer)
                    }
                }
                .connect(host: host, port: port).get()
        } catch {
            done.fail(error)
            throw AdminClient.Failure(description: "cannot reach meshd admin at \(options.admin): \(error)")
        }
        var headers = HTTPHeaders()
        headers.add(name: "host", value: options.admin)
        channel.write(
            HTTPClientRequestPart.head(HTTPRequestHead(version: .http1_1, method: .GET, uri: "/tap?\(query)", headers: headers)),
            promise: nil)
        channel.writeAndFlush(HTTPClientRequestPart.end(nil), promise: nil)
        try await done.futureResult.get()
        try? await channel.close()
    }

    static let header = Self.row(["TIME", "DIR", "METHOD", "AUTHORITY", "PATH", "STATUS", "MS", "ROUTE", "UPSTREAM", "ERROR"])

    static func row(_ cells: [String]) -> String {
        let widths = [12, 8, 6, 16, 24, 6, 8, 12, 21, 0]
        return zip(cells, widths).map { c, w in w == 0 ? c : c.padding(toLength: Swift.max(w, c.count), withPad: " ", startingAt: 0) }
            .joined(separator: " ")
    }

    /// One access-log line (JSON) as a table row.
    static func format(_ line: String) -> String {
        guard let o = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any] else { return line }
        let time: String = {
            guard let ms = o["ts_ms"] as? Int else { return "-" }
            let f = DateFormatter()
            f.dateFormat = "HH:mm:ss.SSS"
            return f.string(from: Date(timeIntervalSince1970: Double(ms) / 1000))
        }()
        func s(_ k: String) -> String { (o[k].map { "\($0)" }) ?? "-" }
        let ms = (o["duration_ms"] as? Double).map { String(format: "%.2f", $0) } ?? "-"
        return row([time, s("direction"), s("method"), s("authority"), s("path"), s("status"), ms, s("route"), s("upstream"), s("error")])
    }

    /// Prints the streamed body line by line; completes `done` at the end of the response.
    final class LinePrinter: ChannelInboundHandler, Sendable {
        typealias InboundIn = HTTPClientResponsePart
        let json: Bool
        let done: EventLoopPromise<Void>
        private let pending = StreamedLines()

        init(json: Bool, done: EventLoopPromise<Void>) {
            self.json = json
            self.done = done
        }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            switch unwrapInboundIn(data) {
            case .head(let h):
                if h.status != .ok { pending.failed = "meshd answered \(h.status.code)" }
            case .body(let b):
                pending.append(b)
                while let line = pending.nextLine() {
                    if pending.failed != nil {
                        pending.failed! += ": " + line
                        continue
                    }
                    print(json ? line : Tap.format(line))
                }
                fflush(nil)
            case .end:
                if let f = pending.failed { done.fail(AdminClient.Failure(description: f)) } else { done.succeed(()) }
            }
        }

        func channelInactive(context: ChannelHandlerContext) {
            done.fail(AdminClient.Failure(description: "meshd closed the tap"))
        }

        func errorCaught(context: ChannelHandlerContext, error: Error) {
            done.fail(error)
            context.close(promise: nil)
        }
    }
}

/// Bytes of a streamed body waiting for their end of line (used on one event loop only).
final class StreamedLines: @unchecked Sendable {
    private var buffer = ByteBuffer()
    var failed: String?

    func append(_ b: ByteBuffer) {
        var b = b
        buffer.writeBuffer(&b)
    }

    func nextLine() -> String? {
        guard let nl = buffer.readableBytesView.firstIndex(of: UInt8(ascii: "\n")) else { return nil }
        let length = nl - buffer.readerIndex
        let line = buffer.readString(length: length) ?? ""
        buffer.moveReaderIndex(forwardBy: 1)
        return line
    }
}
