import CoreMetrics
import Logging
import MeshCore
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#elseif canImport(Darwin)
    import Darwin
#endif

/// Runs the discovery source of every service that has one (control side, never on an event loop)
/// and republishes the snapshot when a source reports a new endpoint set.
///
/// Semantics (as gRPC's name resolvers and linkerd's destination service): the last good set is
/// kept when a source fails (unreadable or invalid file, DNS error) and, unless `allowEmpty` is set,
/// when it reports no endpoint at all; every outcome is logged and counted in
/// `meshd_discovery_updates_total{service,result}`. An endpoint that leaves keeps serving the requests
/// already sent to it; new requests no longer pick it.
final class DiscoveryManager: @unchecked Sendable {
    private let logger: Logger
    private let metrics: MeshMetrics
    private let state = NIOLockedValueBox<State>(State())
    /// Set once the runtime is up; discovery publishes through it.
    weak var runtime: MeshRuntime? {
        get { state.withLockedValue { $0.runtime } }
        set { state.withLockedValue { $0.runtime = newValue } }
    }

    struct State {
        weak var runtime: MeshRuntime?
        /// Last good endpoint set per service.
        var sets: [String: [EndpointConfig]] = [:]
        /// Running watchers by service, with the config they run.
        var watchers: [String: (config: DiscoveryConfig, task: Task<Void, Never>)] = [:]
    }

    init(logger: Logger, metrics: MeshMetrics) {
        self.logger = logger
        self.metrics = metrics
    }

    func endpointSets() -> [String: [EndpointConfig]] { state.withLockedValue { $0.sets } }

    /// Starts, restarts or stops watchers so they match `config`.
    func sync(with config: MeshConfig) {
        var wanted: [String: DiscoveryConfig] = [:]
        for s in config.services { if let d = s.discovery { wanted[s.name] = d } }
        state.withLockedValue { st in
            for (name, w) in st.watchers where wanted[name] != w.config {
                w.task.cancel()
                st.watchers[name] = nil
                st.sets[name] = nil
            }
            for (name, d) in wanted where st.watchers[name] == nil {
                let task = Task<Void, Never> { [weak self] in
                    guard let self else { return }
                    await self.run(service: name, config: d)
                }
                st.watchers[name] = (d, task)
            }
        }
    }

    func stopAll() {
        state.withLockedValue { st in
            for w in st.watchers.values { w.task.cancel() }
            st.watchers.removeAll()
        }
    }

    private func count(_ service: String, _ result: String) {
        CoreMetrics.Counter(
            label: "meshd_discovery_updates_total", dimensions: [("service", service), ("result", result)],
            factory: metrics.factoryForDynamicMetrics
        ).increment()
    }

    private func run(service: String, config: DiscoveryConfig) async {
        var lastFileText: String?
        var lastProblem: String?
        while !Task.isCancelled {
            switch config.source {
            case .file(let path):
                do {
                    let text = try readFile(path)
                    if text != lastFileText {
                        lastFileText = text
                        do {
                            let endpoints = try ConfigLoader.loadEndpoints(yaml: text)
                            await update(service, endpoints, config, source: path)
                            lastProblem = nil
                        } catch {
                            count(service, "failed")
                            logger.error(
                                "discovery file invalid; keeping the last good endpoints",
                                metadata: ["service": "\(service)", "path": "\(path)", "problems": "\(error.description)"])
                        }
                    }
                } catch {
                    // A ConfigMap swap can leave the path missing for an instant: report once, retry.
                    let problem = "\(error)"
                    if problem != lastProblem {
                        lastProblem = problem
                        count(service, "failed")
                        logger.warning(
                            "discovery file unreadable; keeping the last good endpoints",
                            metadata: ["service": "\(service)", "error": "\(problem)"])
                    }
                    lastFileText = nil
                }
            case .dns(let name, let port):
                let result = await Self.resolve(name)
                switch result {
                case .success(let ips):
                    let endpoints = ips.map { EndpointConfig(address: HostPort(host: $0, port: port)) }
                    await update(service, endpoints, config, source: name)
                    lastProblem = nil
                case .failure(let error):
                    count(service, "failed")
                    if error.description != lastProblem {
                        lastProblem = error.description
                        logger.warning(
                            "DNS discovery failed; keeping the last good endpoints",
                            metadata: ["service": "\(service)", "name": "\(name)", "error": "\(error)"])
                    }
                }
            }
            try? await Task.sleep(for: .nanoseconds(config.refresh.nanoseconds))
        }
    }

    private func update(_ service: String, _ endpoints: [EndpointConfig], _ config: DiscoveryConfig, source: String) async {
        if endpoints.isEmpty && !config.allowEmpty {
            count(service, "empty_ignored")
            logger.warning(
                "discovery returned no endpoints; keeping the last good set (allowEmpty: false)",
                metadata: ["service": "\(service)", "source": "\(source)"])
            return
        }
        let changed = state.withLockedValue { st -> Bool in
            if st.sets[service] == endpoints { return false }
            st.sets[service] = endpoints
            return true
        }
        guard changed, let runtime else { return }
        do {
            let version = try await runtime.discoveryChangedOffLoop(service: service)
            count(service, "ok")
            logger.info(
                "discovery updated endpoints",
                metadata: [
                    "service": "\(service)", "endpoints": "\(endpoints.map(\.address.description).joined(separator: ","))",
                    "version": "\(version)",
                ])
        } catch {
            count(service, "failed")
            logger.error(
                "discovered endpoints rejected; keeping the last good set",
                metadata: ["service": "\(service)", "problems": "\(error.description)"])
            state.withLockedValue { $0.sets[service] = nil }
        }
    }

    struct ResolveError: Error, CustomStringConvertible {
        var description: String
    }

    /// A and AAAA records of `name` via getaddrinfo, on NIO's blocking-I/O thread pool (never on an
    /// event loop). Sorted, de-duplicated addresses.
    static func resolve(_ name: String) async -> Result<[String], ResolveError> {
        do {
            let ips = try await NIOThreadPool.singleton.runIfActive { () throws -> [String] in
                var hints = addrinfo()
                hints.ai_family = AF_UNSPEC
                hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
                var result: UnsafeMutablePointer<addrinfo>?
                let rc = getaddrinfo(name, nil, &hints, &result)
                guard rc == 0, let first = result else {
                    throw ResolveError(description: "getaddrinfo: \(String(validatingCString: gai_strerror(rc)) ?? "error \(rc)")")
                }
                defer { freeaddrinfo(first) }
                var out = Set<String>()
                var p: UnsafeMutablePointer<addrinfo>? = first
                while let ai = p {
                    var host = [CChar](repeating: 0, count: Int(NI_MAXHOST))
                    if getnameinfo(ai.pointee.ai_addr, ai.pointee.ai_addrlen, &host, socklen_t(host.count), nil, 0, NI_NUMERICHOST) == 0 {
                        let bytes = host.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }
                        out.insert(String(decoding: bytes, as: UTF8.self))
                    }
                    p = ai.pointee.ai_next
                }
                return out.sorted()
            }
            return .success(ips)
        } catch let e as ResolveError {
            return .failure(e)
        } catch {
            return .failure(ResolveError(description: "\(error)"))
        }
    }
}
