import Atomics
import CMeshSystem
import Dispatch
import Logging
import MeshCore
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

/// A failed system call, with the operation it was for.
struct SystemCallError: Error, CustomStringConvertible {
    let operation: String
    let code: Int32
    var description: String { "\(operation): \(String(cString: strerror(code))) (errno \(code))" }
}

/// Listening TCP sockets meshd makes itself (not through `bind(host:port:)`), so that their
/// descriptors can be handed to a successor (`upgrade.socket`).
enum ListenerSocket {
    static func make(_ address: SocketAddress, backlog: Int32) throws -> NIOBSDSocket.Handle {
        let fd = address.withSockAddr { pointer, length in cmesh_tcp_listen(pointer, socklen_t(length), backlog) }
        if fd < 0 { throw SystemCallError(operation: "cannot listen on \(MeshRuntime.hostPort(address))", code: -fd) }
        return fd
    }

    /// NIO listens again with its default backlog (128) when it adopts a bound socket, before any
    /// option applies: the listener's own bound is set once more after (listen(2) on a listening
    /// socket only changes its backlog).
    static func setBacklog(_ fd: NIOBSDSocket.Handle, _ backlog: Int32) {
        _ = Glibc.listen(fd, backlog)
    }
}

/// One hand-over connection: blocking, with timeouts, used off the event loops only, and by one
/// thread at a time (it is passed from the start-up task to a worker thread and back, never shared).
final class HandoverConnection: @unchecked Sendable {
    let fd: CInt
    private var buffer: [UInt8] = []
    private var descriptors: [CInt] = []

    init(fd: CInt, timeout: MeshDuration) {
        self.fd = fd
        _ = cmesh_set_timeouts(fd, CInt(clamping: timeout.nanoseconds / 1_000_000))
    }

    func send(_ message: Handover.Message, descriptors: [CInt] = []) throws {
        var bytes = Array(message.line.utf8)
        let r = bytes.withUnsafeMutableBytes { raw in
            descriptors.withUnsafeBufferPointer { fds in
                cmesh_send_with_fds(fd, raw.baseAddress, raw.count, fds.baseAddress, CInt(fds.count))
            }
        }
        if r < 0 { throw SystemCallError(operation: "hand-over: send", code: -r) }
    }

    /// The next message and the descriptors that came with it; nil at end of stream. A line that
    /// is not a message gives `(nil, …)`; the descriptors are the caller's to close or use.
    func receive() throws -> (message: Handover.Message?, descriptors: [CInt])? {
        while true {
            if let newline = buffer.firstIndex(of: UInt8(ascii: "\n")) {
                let line = String(decoding: buffer[...newline], as: UTF8.self)
                buffer.removeSubrange(...newline)
                let fds = descriptors
                descriptors = []
                return (Handover.Message(line: Substring(line)), fds)
            }
            if buffer.count > Handover.maxLineBytes {
                let fds = descriptors
                descriptors = []
                buffer = []
                return (nil, fds)
            }
            var chunk = [UInt8](repeating: 0, count: 4096)
            var fds = [CInt](repeating: -1, count: Handover.maxListeners)
            var count: CInt = 0
            let n = chunk.withUnsafeMutableBytes { raw in
                fds.withUnsafeMutableBufferPointer { f in
                    cmesh_receive_with_fds(fd, raw.baseAddress, raw.count, f.baseAddress, CInt(f.count), &count)
                }
            }
            if n < 0 { throw SystemCallError(operation: "hand-over: receive", code: CInt(-n)) }
            descriptors += fds.prefix(Int(count))
            if n == 0 {
                for d in descriptors { Glibc.close(d) }
                descriptors = []
                return nil
            }
            buffer += chunk.prefix(n)
        }
    }

    func close() { _ = Glibc.close(fd) }
}

/// The running meshd's side: listens on `upgrade.socket` (mode 0600; only its own user or root may
/// connect) on a thread of its own, and gives its listening sockets to a successor that asks.
final class HandoverServer: Sendable {
    let path: String
    private let listener: CInt
    private let stopped = ManagedAtomic<Bool>(false)
    /// Set once the sockets went to a successor: the path is the successor's now.
    let handedOver = ManagedAtomic<Bool>(false)
    private let queue = DispatchQueue(label: "meshd.handover")
    /// How long a successor may take between asking and being ready.
    static let successorTimeout = MeshDuration.seconds(120)

    init(path: String) throws {
        let fd = path.withCString { cmesh_unix_listen($0, 4) }
        if fd < 0 { throw SystemCallError(operation: "cannot listen on upgrade.socket \(path)", code: -fd) }
        self.path = path
        self.listener = fd
    }

    func start(runtime: MeshRuntime) {
        queue.async { [self] in
            while !stopped.load(ordering: .relaxed) {
                let fd = cmesh_unix_accept(listener, 250)
                if fd == -EAGAIN || fd == -EINTR { continue }
                if fd < 0 {
                    if stopped.load(ordering: .relaxed) { break }
                    runtime.shared.logger.error(
                        "upgrade.socket: accept failed", metadata: ["error": "\(SystemCallError(operation: "accept", code: -fd))"])
                    usleep(100_000)
                    continue
                }
                serve(HandoverConnection(fd: fd, timeout: Self.successorTimeout), runtime: runtime)
            }
            _ = Glibc.close(listener)
        }
    }

    /// Stops listening; frees the path unless a successor owns it now.
    func stop() {
        if stopped.exchange(true, ordering: .relaxed) { return }
        if !handedOver.load(ordering: .relaxed) { unlink(path) }
    }

    private func serve(_ connection: HandoverConnection, runtime: MeshRuntime) {
        let logger = runtime.shared.logger
        defer { connection.close() }
        let uid = cmesh_peer_uid(connection.fd)
        if uid != Int(getuid()) && uid != 0 {
            logger.warning("upgrade.socket: refused a process of another user", metadata: ["uid": "\(uid)"])
            runtime.handoverCounted("refused")
            try? connection.send(.refused("not the same user"))
            return
        }
        var giver = Handover.Giver()
        while true {
            let received: (message: Handover.Message?, descriptors: [CInt])?
            do {
                received = try connection.receive()
            } catch {
                received = nil
                logger.warning("upgrade.socket: hand-over connection failed", metadata: ["error": "\(error)"])
            }
            guard let received else {
                if case .abandon(let why)? = giver.connectionEnded() {
                    logger.warning("listener hand-over abandoned; still serving", metadata: ["reason": "\(why)"])
                    runtime.handoverCounted("abandoned")
                }
                return
            }
            for d in received.descriptors { _ = Glibc.close(d) }  // a successor sends none
            let listeners = runtime.handoverListeners()
            switch giver.received(received.message, listeners: listeners.map(\.name), draining: runtime.stopping.load(ordering: .relaxed)) {
            case .offer(let names):
                do {
                    try connection.send(.listeners(names), descriptors: listeners.map(\.fd))
                    logger.info(
                        "listener hand-over: sockets sent to the successor", metadata: ["listeners": "\(names.joined(separator: " "))"])
                } catch {
                    logger.warning("listener hand-over failed; still serving", metadata: ["error": "\(error)"])
                    runtime.handoverCounted("abandoned")
                    return
                }
            case .refuse(let reason):
                logger.warning("listener hand-over refused", metadata: ["reason": "\(reason)"])
                runtime.handoverCounted("refused")
                try? connection.send(.refused(reason))
                return
            case .abandon(let reason):
                logger.warning("listener hand-over abandoned; still serving", metadata: ["reason": "\(reason)"])
                runtime.handoverCounted("abandoned")
                return
            case .stopAcceptingAndDrain:
                // The successor serves on the same sockets: free the path for it, tell it, and stop
                // accepting (closing this process's copies closes no socket).
                handedOver.store(true, ordering: .relaxed)
                stopped.store(true, ordering: .relaxed)
                unlink(path)
                try? connection.send(.done)
                runtime.handoverCounted("handed_over")
                logger.notice("listener hand-over done: the successor is ready; draining and exiting")
                runtime.handedOver()
                return
            }
        }
    }
}

/// The successor's side (`--takeover`).
enum HandoverClient {
    /// Asks the meshd listening at `path` for its listeners. nil when none listens there (the first
    /// start of a DaemonSet): the successor binds its own.
    static func request(path: String, logger: Logger) throws -> (connection: HandoverConnection, offered: [String: CInt])? {
        let fd = path.withCString { cmesh_unix_connect($0) }
        if fd == -ENOENT || fd == -ECONNREFUSED {
            logger.info("--takeover: no meshd listens on upgrade.socket; binding new listeners", metadata: ["path": "\(path)"])
            return nil
        }
        if fd < 0 { throw SystemCallError(operation: "--takeover: cannot connect to upgrade.socket \(path)", code: -fd) }
        let connection = HandoverConnection(fd: fd, timeout: .seconds(10))
        do {
            try connection.send(.takeover(version: Handover.version))
            guard let reply = try connection.receive() else {
                throw TakeoverError(description: "the running meshd closed the hand-over connection")
            }
            switch reply.message {
            case .listeners(let names)? where names.count == reply.descriptors.count:
                return (connection, Dictionary(uniqueKeysWithValues: zip(names, reply.descriptors)))
            case .refused(let reason)?:
                for d in reply.descriptors { _ = Glibc.close(d) }
                throw TakeoverError(description: "the running meshd refused the hand-over: \(reason)")
            default:
                for d in reply.descriptors { _ = Glibc.close(d) }
                throw TakeoverError(description: "the running meshd answered with something that is not a listener offer")
            }
        } catch {
            connection.close()
            throw error
        }
    }

    /// Tells the running meshd this one is ready, and waits until it stopped accepting.
    static func confirmReady(_ connection: HandoverConnection) throws {
        defer { connection.close() }
        try connection.send(.ready)
        guard let reply = try connection.receive(), reply.message == .done else {
            throw TakeoverError(description: "the running meshd did not confirm the hand-over")
        }
    }

    struct TakeoverError: Error, CustomStringConvertible {
        var description: String
    }
}
