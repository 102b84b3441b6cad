/// Who may call the workloads behind an inbound listener (`authorization` in the config), decided per
/// request from the caller's identity (proven by mTLS, nil for a plaintext caller), the local workload
/// called (the sidecar's own identity; on a node, the destination pod's), and the request path.
///
/// The model is Linkerd's: the rules are allow rules; a rule's `to` and `pathPrefix` name what it
/// protects. A request to something that some rule protects is allowed only when one of those rules
/// lists the caller in `from`; a request to something no rule protects gets `defaultPolicy`.
public struct AuthorizationPolicy: Sendable, Equatable {
    public enum DefaultPolicy: String, Sendable, Equatable, CaseIterable {
        /// Every caller, with or without an identity (meshd's default: nothing changes until rules say so).
        case allUnauthenticated = "all-unauthenticated"
        /// Callers that proved an identity of a trusted mesh (mTLS).
        case allAuthenticated = "all-authenticated"
        /// Nobody, unless a rule allows them.
        case deny
    }

    public struct Rule: Sendable, Equatable {
        /// The local workload the rule protects (node mode: one of the node's workloads); nil: all.
        public var to: IdentityPattern?
        /// The callers it allows.
        public var from: [IdentityPattern]
        /// The paths it protects (a prefix); nil: all.
        public var pathPrefix: String?

        public init(to: IdentityPattern? = nil, from: [IdentityPattern], pathPrefix: String? = nil) {
            self.to = to
            self.from = from
            self.pathPrefix = pathPrefix
        }

        /// Whether the rule protects a request to `destination` for `path`.
        func covers(destination: SpiffeID?, path: Substring) -> Bool {
            if let to {
                guard let destination, to.matches(destination) else { return false }
            }
            // Bytes, as routes compare them (and no `Character`-level comparison per request).
            if let pathPrefix, !path.utf8.starts(with: pathPrefix.utf8) { return false }
            return true
        }
    }

    public enum Decision: Sendable, Equatable {
        /// Allowed by rule `rule` (its index), or by the default policy (nil).
        case allow(rule: Int?)
        /// Denied: the request is protected by rule `rule` and none of its rules lists the caller, or
        /// (nil) the default policy refuses it.
        case deny(rule: Int?)

        public var allowed: Bool {
            if case .allow = self { return true }
            return false
        }

        /// The metric label: `rule-N` or `default`.
        public var ruleLabel: String {
            switch self {
            case .allow(let r), .deny(let r): return r.map { "rule-\($0)" } ?? "default"
            }
        }
    }

    public var defaultPolicy: DefaultPolicy = .allUnauthenticated
    public var rules: [Rule] = []

    public init(defaultPolicy: DefaultPolicy = .allUnauthenticated, rules: [Rule] = []) {
        self.defaultPolicy = defaultPolicy
        self.rules = rules
    }

    /// Whether every request is allowed whatever its caller (no rules, default all-unauthenticated):
    /// the request path then skips the decision.
    public var allowsEveryone: Bool { rules.isEmpty && defaultPolicy == .allUnauthenticated }

    public func decide(caller: SpiffeID?, destination: SpiffeID?, path: Substring) -> Decision {
        var protectedBy: Int?
        for (i, rule) in rules.enumerated() where rule.covers(destination: destination, path: path) {
            if protectedBy == nil { protectedBy = i }
            if let caller, rule.from.contains(where: { $0.matches(caller) }) { return .allow(rule: i) }
        }
        if let protectedBy { return .deny(rule: protectedBy) }
        switch defaultPolicy {
        case .allUnauthenticated: return .allow(rule: nil)
        case .allAuthenticated: return caller == nil ? .deny(rule: nil) : .allow(rule: nil)
        case .deny: return .deny(rule: nil)
        }
    }
}

/// `inbound.tls`: what an inbound listener accepts.
public enum InboundTLSMode: String, Sendable, Equatable, CaseIterable {
    /// Only mTLS with a trusted client certificate; plaintext connections are closed unserved.
    case strict
    /// mTLS and plaintext, told apart by the first bytes (the default when an identity is configured).
    case permissive
    /// Plaintext only (the default without an identity).
    case disabled
}

/// Why a TLS handshake was refused (`meshd_tls_handshake_errors_total{reason}`).
public enum TLSRefusal: String, Sendable, Equatable, CaseIterable {
    /// The peer's chain does not lead to the trust bundle.
    case untrusted
    case expired
    case notYetValid = "not_yet_valid"
    /// A trusted certificate whose SPIFFE ID is not the one expected (outbound), or none / another
    /// trust domain's (inbound).
    case wrongIdentity = "wrong_identity"
    /// The client sent no certificate (mTLS requires one).
    case noCertificate = "no_certificate"
    /// A plaintext connection on a strict listener.
    case plaintext
    /// The handshake did not finish within `identity.handshakeTimeout`.
    case timeout
    /// Any other handshake failure (protocol versions, ciphers, a broken record).
    case handshake
    /// Node mode: the server name named no pod of a workload with an identity on this node.
    case unknownServerName = "unknown_server_name"
}
