/// The hand-over of listening sockets from a running meshd to its successor (`upgrade.socket`,
/// `meshd --takeover`): the protocol's messages and the decisions of both sides. meshd moves the
/// bytes and the descriptors (SCM_RIGHTS); everything decided is here, tested without sockets.
///
/// ```
/// successor                          running meshd
///   TAKEOVER 1              ──▶
///                           ◀──      LISTENERS admin inbound outbound …   (+ one descriptor each)
///   (serves on them, /ready 200)
///   READY                   ──▶
///                                    stops accepting, frees the socket path
///                           ◀──      DONE
///   (listens on upgrade.socket)      drains in-flight work, exits 0
/// ```
///
/// Every message is one line of text. A successor that goes away before `READY` changes nothing:
/// the running meshd keeps serving and waits for the next one.
public enum Handover {
    /// The protocol version this meshd speaks.
    public static let version = 1
    /// The longest message accepted (a line longer than this is a protocol error).
    public static let maxLineBytes = 16 * 1024
    /// At most this many listeners are handed over (SCM_RIGHTS carries them in one message).
    public static let maxListeners = 64

    public enum Message: Equatable, Sendable {
        /// Successor → running: asks for the listeners.
        case takeover(version: Int)
        /// Running → successor: the listeners' names, in the order of the descriptors sent with it.
        case listeners([String])
        /// Running → successor: no hand-over (a reason for the log).
        case refused(String)
        /// Successor → running: it serves on every listener and is ready.
        case ready
        /// Running → successor: it stopped accepting and freed the socket path.
        case done

        /// The message as sent, with its newline.
        public var line: String {
            switch self {
            case .takeover(let v): return "TAKEOVER \(v)\n"
            case .listeners(let names): return (["LISTENERS"] + names).joined(separator: " ") + "\n"
            case .refused(let reason):
                return "REFUSED " + reason.map { $0 == "\n" || $0 == "\r" ? " " : $0 } + "\n"
            case .ready: return "READY\n"
            case .done: return "DONE\n"
            }
        }

        /// Parses one line (without or with its newline); nil when it is not a message.
        public init?(line raw: Substring) {
            var text = raw
            // ("\r\n" is one Character.)
            if let last = text.last, last == "\n" || last == "\r\n" { text = text.dropLast() }
            guard text.utf8.count <= Handover.maxLineBytes else { return nil }
            let words = text.split(separator: " ", omittingEmptySubsequences: true)
            guard let verb = words.first else { return nil }
            switch verb {
            case "TAKEOVER":
                guard words.count == 2, let v = Int(words[1]), v > 0 else { return nil }
                self = .takeover(version: v)
            case "LISTENERS":
                let names = words.dropFirst().map(String.init)
                guard names.count <= Handover.maxListeners, Set(names).count == names.count,
                    names.allSatisfy(Handover.isValidName)
                else { return nil }
                self = .listeners(names)
            case "REFUSED":
                self = .refused(text.dropFirst("REFUSED".count).trimmingPrefix(" ").description)
            case "READY" where words.count == 1: self = .ready
            case "DONE" where words.count == 1: self = .done
            default: return nil
            }
        }
    }

    /// Listener names: `admin`, `outbound`, `inbound`, `tcp:SERVICE` — no spaces or control bytes.
    public static func isValidName(_ name: String) -> Bool {
        !name.isEmpty && name.utf8.count <= 256 && name.utf8.allSatisfy { $0 > 0x20 && $0 < 0x7F }
    }

    /// What the successor does with each listener: adopt the running meshd's socket when it is
    /// offered (and listens where the configuration says), bind a new one otherwise; a socket
    /// offered for a listener the configuration no longer has is closed.
    public struct Plan: Equatable, Sendable {
        public var adopt: [String] = []
        public var bind: [String] = []
        public var close: [String] = []

        public init(configured: [String], offered: [String]) {
            let offeredSet = Set(offered)
            for name in configured {
                if offeredSet.contains(name) { adopt.append(name) } else { bind.append(name) }
            }
            let configuredSet = Set(configured)
            close = offered.filter { !configuredSet.contains($0) }
        }
    }

    /// The running meshd's side of one hand-over connection.
    public struct Giver: Equatable, Sendable {
        public enum State: Equatable, Sendable {
            case awaitingTakeover
            /// The listeners went out; waiting for the successor to be ready.
            case offered
            /// The successor is ready: this meshd stops accepting and drains.
            case handedOver
            case closed
        }

        public enum Action: Equatable, Sendable {
            /// Send `LISTENERS` with these listeners' descriptors.
            case offer([String])
            /// Send `REFUSED`, close the connection, keep serving.
            case refuse(String)
            /// Stop accepting (close this meshd's copies of the listeners, free the socket path),
            /// send `DONE`, then drain and exit 0.
            case stopAcceptingAndDrain
            /// Close the connection and keep serving (the successor did not finish; a log line says why).
            case abandon(String)
        }

        public private(set) var state: State = .awaitingTakeover

        public init() {}

        /// A message from the successor. `listeners`: what this meshd listens on now; `draining`:
        /// it is already stopping (a second successor, or a shutdown in progress).
        public mutating func received(_ message: Message?, listeners: [String], draining: Bool) -> Action {
            switch (state, message) {
            case (.awaitingTakeover, .takeover(let v)?):
                if v != Handover.version {
                    state = .closed
                    return .refuse("protocol version \(v) not supported (this meshd speaks \(Handover.version))")
                }
                if draining {
                    state = .closed
                    return .refuse("this meshd is already stopping")
                }
                if listeners.count > Handover.maxListeners {
                    state = .closed
                    return .refuse("more than \(Handover.maxListeners) listeners")
                }
                state = .offered
                return .offer(listeners)
            case (.offered, .ready?):
                // Also when a shutdown began while the successor was starting: it serves on the same
                // sockets, and this meshd stops either way.
                state = .handedOver
                return .stopAcceptingAndDrain
            case (.closed, _), (.handedOver, _):
                return .abandon("message after the hand-over ended")
            default:
                state = .closed
                return .abandon(message.map { "unexpected message: \($0.line.dropLast())" } ?? "not a hand-over message")
            }
        }

        /// The successor closed the connection (or it timed out).
        public mutating func connectionEnded() -> Action? {
            defer { if state != .handedOver { state = .closed } }
            switch state {
            case .awaitingTakeover, .offered: return .abandon("the successor went away before it was ready")
            case .handedOver, .closed: return nil
            }
        }
    }
}
