/// meshd's whole configuration: a validated, immutable value. Every key is documented, with its
/// default and bound, in `docs/configuration.md`.
public struct MeshConfig: Sendable, Equatable {
    public enum Mode: String, Sendable, Equatable, CaseIterable {
        case sidecar
        case node
    }

    public var mode: Mode = .sidecar
    /// Node mode: the host IP that the outbound and inbound listeners bind.
    public var nodeIP: String?
    /// Number of event loops; 0 means one per core.
    public var threads: Int = 0
    public var outbound = OutboundConfig()
    public var inbound = InboundConfig()
    public var admin = AdminConfig()
    /// Hand-over of the listening sockets to a successor (`meshd --takeover`).
    public var upgrade = UpgradeConfig()
    public var node = NodeConfig()
    public var http = HTTPConfig()
    public var upstream = UpstreamConfig()
    public var http2 = HTTP2Config()
    /// How long a graceful shutdown waits for in-flight requests before closing connections.
    public var drainTimeout: MeshDuration = .seconds(30)
    /// Write one JSON access-log line per request (`accessLog: true`, or a section for a file or a
    /// sampling ratio: `accessLogOptions`).
    public var accessLog: Bool = false
    public var accessLogOptions = AccessLogConfig()
    public var services: [ServiceConfig] = []
    public var routes: [RouteConfig] = []
    /// Where this meshd runs, for locality preference: `zone` and `node` (node name). Environment:
    /// `MESHD_ZONE`, `MESHD_NODE_NAME`.
    public var locality = SelfLocality()
    /// Workload identities for mTLS (nil: no identity; listeners speak plaintext only).
    public var identity: IdentityConfig?
    /// Who may call the local workloads (inbound).
    public var authorization = AuthorizationPolicy()

    public init() {}

    /// `inbound.tls` in force: as configured, else `permissive` with an identity and `disabled` without.
    public var effectiveInboundTLS: InboundTLSMode {
        inbound.tls ?? (identity == nil ? .disabled : .permissive)
    }

    /// The configuration meshd starts with when no file is given: a sidecar in front of an
    /// application on 127.0.0.1:8080.
    public static var builtInDefault: MeshConfig { MeshConfig() }

    /// The outbound listen address in force: the configured one, or the placement's default.
    public var effectiveOutboundListen: HostPort {
        if let listen = outbound.listen { return listen }
        switch mode {
        case .sidecar: return HostPort(host: "127.0.0.1", port: 4140)
        case .node: return HostPort(host: nodeIP ?? "127.0.0.1", port: 4140)
        }
    }

    /// The inbound listen address in force.
    public var effectiveInboundListen: HostPort {
        if let listen = inbound.listen { return listen }
        switch mode {
        case .sidecar: return HostPort(host: "0.0.0.0", port: 4143)
        case .node: return HostPort(host: nodeIP ?? "127.0.0.1", port: 4143)
        }
    }

    /// Node mode: the sources allowed to use the outbound listener. Defaults to the pod CIDRs, or
    /// loopback when none are configured, so a node proxy is never an open proxy.
    public var effectiveAllowedSources: [CIDR] {
        if !node.allowedSources.isEmpty { return node.allowedSources }
        if !node.podCIDRs.isEmpty { return node.podCIDRs + [CIDR.loopbackV4, CIDR.loopbackV6] }
        return [CIDR.loopbackV4, CIDR.loopbackV6]
    }
}

public struct SelfLocality: Sendable, Equatable {
    public var zone: String?
    public var node: String?
    public init(zone: String? = nil, node: String? = nil) {
        self.zone = zone
        self.node = node
    }
}

/// What a listener expects: `detect` reads the first bytes (HTTP/1.1, HTTP/2 preface, TLS, otherwise
/// opaque TCP); `http1`, `http2` (prior knowledge, h2c; `grpc` is the same) and `tcp` skip detection.
public enum ListenerProtocol: String, Sendable, Equatable, CaseIterable {
    case detect
    case http1
    case http2
    case grpc
    case tcp
}

/// The HTTP version meshd speaks to an upstream: `auto` keeps the request's own (an HTTP/2 or gRPC
/// request goes on as HTTP/2, an HTTP/1.1 request as HTTP/1.1); `http1` and `http2` force one and
/// translate (HTTP/2 is prior knowledge, h2c). `grpc` is `http2`, and says the service speaks gRPC.
public enum UpstreamProtocol: String, Sendable, Equatable, CaseIterable {
    case auto
    case http1
    case http2
    case grpc

    /// Whether a request that arrived as HTTP/2 (`downstreamHTTP2`) goes upstream as HTTP/2.
    public func usesHTTP2(downstreamHTTP2: Bool) -> Bool {
        switch self {
        case .auto: return downstreamHTTP2
        case .http1: return false
        case .http2, .grpc: return true
        }
    }
}

/// HTTP/2 on both sides (downstream SETTINGS and the upstream pool).
public struct HTTP2Config: Sendable, Equatable {
    /// Streams one downstream connection may have open (SETTINGS_MAX_CONCURRENT_STREAMS), and the
    /// most meshd opens on one upstream connection (fewer if the endpoint says so); past it a new
    /// upstream connection is opened.
    public var maxConcurrentStreams: Int = 100
    /// Flow-control window per stream, both directions (bytes meshd accepts on a stream before the
    /// reader has taken them): bounds memory per stream; a slow reader slows the writer.
    public var initialWindowSize: Int = 256 * 1024
    /// Upstream HTTP/2 connections per endpoint per event loop (each carrying up to
    /// maxConcurrentStreams); past it requests wait for a stream (bounded by the service's maxPending).
    public var maxConnectionsPerEndpoint: Int = 16
    /// RST_STREAM frames a downstream client may send per 30 s before meshd closes its connection
    /// (the rapid-reset defence, CVE-2023-44487). gRPC clients reset a stream for every call they
    /// cancel or that passes its deadline, and a calling meshd's pooled connection carries the
    /// cancellations of a whole pod, so this is far above SwiftNIO's default of 200 (an attack sends
    /// hundreds of thousands per second).
    public var maxResetStreams: Int = 10_000
    /// Streams a downstream client may reset before meshd started working on them (RST_STREAM in the
    /// same read as the HEADERS) per second before meshd closes its connection. A flood sends
    /// hundreds of thousands per second; a gRPC client whose queued calls expire together sends as
    /// many as it had calls queued (grpcio sends HEADERS and RST_STREAM at once for each).
    public var maxPrematureResets: Int = 1000
    public init() {}

    /// Streams a connection remembers as reset by meshd, so that the peer's frames still in flight
    /// for them are ignored (RFC 9113 §5.4.2) rather than taken as a protocol error that ends the
    /// connection (GOAWAY STREAM_CLOSED). SwiftNIO remembers 32; a burst of cancelled calls resets up
    /// to every open stream at once, so meshd remembers four times the concurrency limit.
    public var recentlyResetStreams: Int { max(4 * maxConcurrentStreams, 32) }
}

public struct OutboundConfig: Sendable, Equatable {
    /// Default: 127.0.0.1:4140 (sidecar), <nodeIP>:4140 (node).
    public var listen: HostPort?
    public var `protocol`: ListenerProtocol = .detect
    public init() {}
}

public struct InboundConfig: Sendable, Equatable {
    /// Default: 0.0.0.0:4143 (sidecar), <nodeIP>:4143 (node).
    public var listen: HostPort?
    /// Sidecar: where the local application listens.
    public var app: HostPort = HostPort(host: "127.0.0.1", port: 8080)
    public var `protocol`: ListenerProtocol = .detect
    /// The HTTP version spoken to the application (sidecar) or pod (node); `auto` keeps the request's.
    public var appProtocol: UpstreamProtocol = .auto
    /// `strict`, `permissive` or `disabled`; nil: `permissive` with an identity, else `disabled`.
    public var tls: InboundTLSMode?
    public init() {}
}

/// `upgrade.socket`: the Unix socket over which a running meshd hands its listening sockets to a
/// successor started with `--takeover` (SCM_RIGHTS), so an upgrade never refuses a connection.
public struct UpgradeConfig: Sendable, Equatable {
    public var socket: String?
    /// After handing its listeners over and draining: `exit` (0), or `wait` for SIGTERM without any
    /// listener, then exit 0 — for a Kubernetes container, which would otherwise be restarted (and
    /// take the sockets back) before its pod is deleted.
    public var afterHandover: AfterHandover = .exit
    public enum AfterHandover: String, Sendable, Equatable { case exit, wait }
    public init() {}
}

public struct AdminConfig: Sendable, Equatable {
    public var listen: HostPort = HostPort(host: "127.0.0.1", port: 4191)
    public init() {}
}

public struct NodeConfig: Sendable, Equatable {
    /// The pod address blocks of this node: the inbound listener forwards only into them, and they
    /// are the default allowed sources of the outbound listener.
    public var podCIDRs: [CIDR] = []
    /// Sources allowed to connect to the outbound listener in node mode (default: podCIDRs + loopback).
    public var allowedSources: [CIDR] = []
    /// Source pods labelled in `meshd_source_requests_total` (the busiest; the rest are `other`).
    public var sourceMetrics = 10
    public init() {}
}

/// Where access-log lines go and how many requests get one.
public struct AccessLogConfig: Sendable, Equatable {
    /// A file to append to (reopened on SIGUSR1, for log rotation); nil: standard output.
    public var path: String?
    /// The fraction of requests that get a line (0…1). meshd's own error replies always do.
    public var sampleRatio: Double = 1
    public init() {}

    /// Whether a request gets its line: `draw` is uniform in [0, 1).
    public func samples(errorReply: Bool, draw: Double) -> Bool {
        errorReply || sampleRatio >= 1 || draw < sampleRatio
    }
}

public struct HTTPConfig: Sendable, Equatable {
    /// Largest request or response head (request line + headers) accepted, in bytes. Over it: 431 / 502.
    public var maxHeaderBytes: Int = 64 * 1024
    /// Longest request line (method, request target, version; HTTP/2: `:method` and `:path`) accepted,
    /// in bytes. Over it: 414. The head bound above applies as well.
    public var maxRequestLineBytes: Int = 16 * 1024
    /// A client must finish sending a request head within this time after connecting or after the
    /// previous response; otherwise the connection is closed (408 if nothing of the head was read yet).
    public var headerReadTimeout: MeshDuration = .seconds(10)
    /// A downstream keep-alive connection with no request in flight is closed after this long.
    public var idleTimeout: MeshDuration = .seconds(60)
    /// Open downstream connections per listener; past it new connections are closed at accept.
    public var maxConnections: Int = 10_000
    /// Node mode, outbound listener: connections one source address (a pod) may hold open.
    public var maxConnectionsPerSource = 1000
    /// Protocol detection: a connection that sends too few bytes to tell within this time is closed.
    public var detectTimeout: MeshDuration = .seconds(10)
    public init() {}
}

public struct UpstreamConfig: Sendable, Equatable {
    /// Time to establish a TCP connection to an endpoint; past it the request gets 503.
    public var connectTimeout: MeshDuration = .seconds(1)
    /// Default time from the request head to the response head (a route may override); 504 past it.
    public var requestTimeout: MeshDuration = .seconds(15)
    /// A pooled idle upstream connection is closed after this long.
    public var idleTimeout: MeshDuration = .seconds(60)
    /// Idle connections kept per endpoint per event loop; extra ones are closed when released.
    public var maxIdlePerEndpoint: Int = 64
    public init() {}
}

public struct EndpointConfig: Sendable, Equatable, Hashable {
    /// The workload's address (a sidecar's inbound, or a pod IP and port behind a node proxy).
    public var address: HostPort
    /// When set, meshd connects here (the inbound listener of the node proxy that hosts the pod) and
    /// names `address` in the `x-meshd-dst` header; otherwise it connects to `address`.
    public var via: HostPort?
    public var weight: Int = 1
    /// Locality labels, for `services[].locality`.
    public var zone: String?
    public var node: String?

    public init(address: HostPort, via: HostPort? = nil, weight: Int = 1, zone: String? = nil, node: String? = nil) {
        self.address = address
        self.via = via
        self.weight = weight
        self.zone = zone
        self.node = node
    }

    /// Where the TCP connection goes.
    public var connectAddress: HostPort { via ?? address }
}

public struct ServiceConfig: Sendable, Equatable {
    public var name: String
    /// Static endpoints; with `discovery`, the initial set until the source answers.
    public var endpoints: [EndpointConfig] = []
    public var discovery: DiscoveryConfig?
    public var balancer = BalancerConfig()
    public var locality: LocalityPreference?
    /// `timeouts.connect` (default: `upstream.connectTimeout`) and `timeouts.idle`: an upstream
    /// exchange with no byte in either direction for this long is cut (default: `upstream.idleTimeout`).
    public var connectTimeout: MeshDuration?
    public var idleTimeout: MeshDuration?
    public var limits = CircuitBreakerLimits()
    public var outlierDetection = OutlierDetector.Config()
    /// `auto` (default: the request's own HTTP version), `http1`, `http2`, `grpc`, or `tcp`: an
    /// opaque TCP service, reached through its own `listen` address.
    public var `protocol`: ServiceProtocol = .auto
    /// tcp services: the local address applications connect to; bytes go to one of the endpoints.
    public var listen: HostPort?
    /// The endpoints are meshd proxies reached over mTLS, proving this identity.
    public var tls: ServiceTLSConfig?

    public init(name: String, endpoints: [EndpointConfig] = [], balancer: BalancerConfig = BalancerConfig()) {
        self.name = name
        self.endpoints = endpoints
        self.balancer = balancer
    }
}

public enum ServiceProtocol: String, Sendable, Equatable, CaseIterable {
    case auto
    case http1
    case http2
    case grpc
    case tcp

    /// The HTTP version to the endpoints (nil for tcp).
    public var upstream: UpstreamProtocol? {
        switch self {
        case .auto: return .auto
        case .http1: return .http1
        case .http2: return .http2
        case .grpc: return .grpc
        case .tcp: return nil
        }
    }
}

/// Where a service's endpoints come from besides the static list.
public struct DiscoveryConfig: Sendable, Equatable {
    public enum Source: Sendable, Equatable {
        /// A YAML/JSON file of endpoints, re-read when it changes (checked every `interval`).
        case file(path: String)
        /// A and AAAA records of `name`, re-resolved every `refresh`, each with `port`.
        case dns(name: String, port: Int)
    }

    public var source: Source
    /// File: how often the file is checked. DNS: how often the name is resolved again.
    public var refresh: MeshDuration
    /// Apply an update with no endpoints (default: ignore it and keep the last good set).
    public var allowEmpty = false

    public init(source: Source, refresh: MeshDuration, allowEmpty: Bool = false) {
        self.source = source
        self.refresh = refresh
        self.allowEmpty = allowEmpty
    }
}

public enum BalancerKind: String, Sendable, Equatable, CaseIterable {
    case roundRobin = "round_robin"
    case random
    case leastRequest = "least_request"
    case ewma
    case ringHash = "ring_hash"
    case maglev

    public var usesHashKey: Bool { self == .ringHash || self == .maglev }
}

public struct BalancerConfig: Sendable, Equatable {
    public enum HashKey: Sendable, Equatable, CustomStringConvertible {
        case header(String)
        case cookie(String)
        case sourceIP

        public var description: String {
            switch self {
            case .header(let h): return "header:\(h)"
            case .cookie(let c): return "cookie:\(c)"
            case .sourceIP: return "sourceIP"
            }
        }
    }

    public var algorithm: BalancerKind = .roundRobin
    /// ring_hash / maglev: what is hashed (default: the source IP).
    public var hashKey: HashKey = .sourceIP
    /// ewma: how fast old latency observations fade (linkerd's default).
    public var decay: MeshDuration = .seconds(10)
    /// ewma: the latency assumed for an endpoint with no observation yet (linkerd's default).
    public var defaultRTT: MeshDuration = .milliseconds(30)
    /// ring_hash: points on the ring per unit of endpoint weight. Constant, so an endpoint joining or
    /// leaving never moves the other endpoints' points (their keys stay put).
    public var pointsPerWeight = 128
    /// maglev: lookup table size (a prime).
    public var tableSize = 65537

    public init(algorithm: BalancerKind = .roundRobin) { self.algorithm = algorithm }
}

/// Prefer endpoints on the same node or zone as this meshd, falling back to all endpoints when fewer
/// than `minHealthyShare` of the local ones are healthy (or there are none).
public struct LocalityPreference: Sendable, Equatable {
    public enum Scope: String, Sendable, Equatable {
        case node
        case zone
    }

    public var prefer: Scope
    public var minHealthyShare: Double = 0.5

    public init(prefer: Scope, minHealthyShare: Double = 0.5) {
        self.prefer = prefer
        self.minHealthyShare = minHealthyShare
    }
}

/// A local token bucket on a route. In node mode it applies per source pod by default, so one noisy pod
/// cannot starve the others on a shared node proxy.
public struct RateLimitConfig: Sendable, Equatable {
    public var requestsPerSecond: Double
    public var burst: Double
    /// One bucket per source IP (default: true in node mode, false in sidecar mode).
    public var perSource: Bool?
    public init(requestsPerSecond: Double, burst: Double, perSource: Bool? = nil) {
        self.requestsPerSecond = requestsPerSecond
        self.burst = burst
        self.perSource = perSource
    }
}

public struct RouteConfig: Sendable, Equatable {
    public struct Match: Sendable, Equatable {
        /// Host name the request is addressed to, compared case-insensitively without the port.
        /// `*` or absent matches any; `*.example.com` matches subdomains.
        public var authority: String?
        public var pathPrefix: String?
        public var method: String?
        /// Exact header values; every listed header must match.
        public var headers: [HeaderMatch] = []
        public init() {}
    }

    public struct HeaderMatch: Sendable, Equatable {
        public var name: String
        public var value: String
        public init(name: String, value: String) {
            self.name = name
            self.value = value
        }
    }

    public struct Backend: Sendable, Equatable {
        public var service: String
        public var weight: Int
        public init(service: String, weight: Int) {
            self.service = service
            self.weight = weight
        }
    }

    public var name: String?
    public var match = Match()
    /// One backend (`service:`) or a weighted split (`backends:`).
    public var backends: [Backend] = []
    /// Overrides `upstream.requestTimeout` for this route: the total time for the request, retries
    /// included, from its head to the response head.
    public var timeout: MeshDuration?
    /// Retries; absent: only connection failures are retried (nothing reached the endpoint).
    public var retry: RetryPolicy?
    public var rateLimit: RateLimitConfig?

    public init() {}
}

/// `identity`: this meshd's workload identities (X.509 certificates with a SPIFFE ID in their URI
/// SAN, their keys, and the trust bundle), read from files and reloaded when the files change.
public struct IdentityConfig: Sendable, Equatable {
    /// PEM file of the CA certificates whose workloads are trusted (the mesh's roots).
    public var trustBundle: String = ""
    /// Sidecar: this pod's certificate chain (PEM, leaf first) and key. Node: the node proxy's own,
    /// optional (used for callers that name no pod).
    public var cert: String?
    public var key: String?
    /// Node mode: the node's pods and the identity each runs as.
    public var workloads: [WorkloadIdentityConfig] = []
    /// A TLS handshake (inbound and outbound) must finish within this time.
    public var handshakeTimeout: MeshDuration = .seconds(10)
    /// How often the files are checked for a change.
    public var reloadInterval: MeshDuration = .seconds(1)
    public init() {}
}

public struct WorkloadIdentityConfig: Sendable, Equatable {
    /// The pod IPs that run as this identity.
    public var pods: [IPAddress] = []
    public var cert: String = ""
    public var key: String = ""
    public init(pods: [IPAddress] = [], cert: String = "", key: String = "") {
        self.pods = pods
        self.cert = cert
        self.key = key
    }
}

/// `services[].tls`: the service's endpoints are meshd proxies reached over mTLS.
public struct ServiceTLSConfig: Sendable, Equatable {
    /// The identity the endpoints must prove (exact, `spiffe://TD/ns/NS/*`, or `*` for any trusted).
    public var identity: IdentityPattern
    public init(identity: IdentityPattern) { self.identity = identity }
}
