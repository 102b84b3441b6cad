import Yams

extension Decoder {
    mutating func decodeService(_ node: Node, _ path: String) -> ServiceConfig? {
        let allowed = [
            "name", "endpoints", "discovery", "balancer", "locality", "timeouts", "limits", "outlierDetection", "protocol", "listen",
        ]
        guard let entries = mapping(node, path, allowed: allowed) else { return nil }
        var service = ServiceConfig(name: "")
        var sawName = false
        for (k, v) in entries {
            let p = join(path, k)
            switch k {
            case "name":
                marks[p] = v.mark
                if let name = string(v, p) {
                    sawName = true
                    if isValidName(name) {
                        service.name = name
                    } else {
                        fail(p, v, .invalidValue(name, expected: "a name of letters, digits, '.', '-', '_'"))
                    }
                }
            case "endpoints":
                guard let items = sequence(v) else {
                    fail(p, v, .wrongType(expected: "a list of endpoints"))
                    continue
                }
                service.endpoints = items.enumerated().compactMap { decodeEndpoint($1, "\(p)[\($0)]") }
            case "balancer": decodeBalancer(v, p, into: &service.balancer)
            case "discovery": service.discovery = decodeDiscovery(v, p)
            case "protocol":
                if let text = string(v, p) {
                    if let sp = ServiceProtocol(rawValue: text) {
                        service.protocol = sp
                    } else {
                        fail(p, v, .invalidValue(text, expected: "auto, http1, http2, grpc or tcp"))
                    }
                }
            case "listen":
                marks[p] = v.mark
                service.listen = address(v, p, allowPortZero: true)
            case "timeouts": decode(v, p, ConfigKeys.serviceTimeouts, into: &service)
            case "limits": decode(v, p, ConfigKeys.limits, into: &service.limits)
            case "outlierDetection":
                var od = OutlierDetector.Config()
                guard decode(v, p, ConfigKeys.outlierDetection, into: &od) else { continue }
                if od.maxEjectionTime < od.baseEjectionTime {
                    fail(join(p, "maxEjectionTime"), v, .invalid("must be at least baseEjectionTime"))
                }
                service.outlierDetection = od
            case "locality":
                marks[p] = v.mark
                guard let e = mapping(v, p, allowed: ["prefer", "minHealthyShare"]) else { continue }
                var pref = LocalityPreference(prefer: .zone)
                var sawPrefer = false
                for (lk, lv) in e {
                    let lp = join(p, lk)
                    if lk == "prefer", let text = string(lv, lp) {
                        sawPrefer = true
                        if let scope = LocalityPreference.Scope(rawValue: text) {
                            pref.prefer = scope
                        } else {
                            fail(lp, lv, .invalidValue(text, expected: "node or zone"))
                        }
                    }
                    if lk == "minHealthyShare", let text = string(lv, lp) {
                        if let d = Double(text), d >= 0, d <= 1 {
                            pref.minHealthyShare = d
                        } else {
                            fail(lp, lv, .invalidValue(text, expected: "a number in 0...1"))
                        }
                    }
                }
                if sawPrefer { service.locality = pref } else { fail(p, v, .missingKey("prefer")) }
            default: break
            }
        }
        if !sawName { fail(path, node, .missingKey("name")) }
        return service
    }

    mutating func decodeBalancer(_ node: Node, _ path: String, into b: inout BalancerConfig) {
        let expected = BalancerKind.allCases.map(\.rawValue).joined(separator: ", ")
        if case .scalar = node {
            guard let text = string(node, path) else { return }
            if let kind = BalancerKind(rawValue: text) {
                b.algorithm = kind
            } else {
                fail(path, node, .invalidValue(text, expected: expected))
            }
            return
        }
        let allowed = ["algorithm", "hashKey", "decay", "defaultRTT", "pointsPerWeight", "tableSize"]
        guard let entries = mapping(node, path, allowed: allowed) else { return }
        var sawAlgorithm = false
        for (k, v) in entries {
            let p = join(path, k)
            switch k {
            case "algorithm":
                sawAlgorithm = true
                if let text = string(v, p) {
                    if let kind = BalancerKind(rawValue: text) {
                        b.algorithm = kind
                    } else {
                        fail(p, v, .invalidValue(text, expected: expected))
                    }
                }
            case "hashKey":
                if case .scalar = v {
                    if let text = string(v, p) {
                        if text == "sourceIP" {
                            b.hashKey = .sourceIP
                        } else {
                            fail(p, v, .invalidValue(text, expected: "sourceIP, {header: NAME} or {cookie: NAME}"))
                        }
                    }
                } else if let e = mapping(v, p, allowed: ["header", "cookie", "sourceIP"]), let (hk, hv) = e.first {
                    if e.count > 1 { fail(p, v, .invalid("give one of header, cookie or sourceIP")) }
                    switch hk {
                    case "header": if let h = string(hv, join(p, hk)) { b.hashKey = .header(h.lowercased()) }
                    case "cookie": if let c = string(hv, join(p, hk)) { b.hashKey = .cookie(c) }
                    default: b.hashKey = .sourceIP
                    }
                }
            case "decay": if let d = duration(v, p, max: .seconds(3600)) { b.decay = d }
            case "defaultRTT": if let d = duration(v, p, max: .seconds(60)) { b.defaultRTT = d }
            case "pointsPerWeight": if let i = int(v, p, range: 1...4096) { b.pointsPerWeight = i }
            case "tableSize":
                if let i = int(v, p, range: 3...5_000_011) {
                    if Self.isPrime(i) {
                        b.tableSize = i
                    } else {
                        fail(p, v, .invalidValue(String(i), expected: "a prime number (such as 65537)"))
                    }
                }
            default: break
            }
        }
        if !sawAlgorithm { fail(path, node, .missingKey("algorithm")) }
    }

    static func isPrime(_ n: Int) -> Bool {
        if n < 2 { return false }
        var d = 2
        while d * d <= n {
            if n % d == 0 { return false }
            d += 1
        }
        return true
    }

    mutating func decodeDiscovery(_ node: Node, _ path: String) -> DiscoveryConfig? {
        guard let entries = mapping(node, path, allowed: ["file", "dns", "port", "refresh", "allowEmpty"]) else { return nil }
        var file: String?
        var dns: String?
        var port: Int?
        var refresh: MeshDuration?
        var allowEmpty = false
        for (k, v) in entries {
            let p = join(path, k)
            switch k {
            case "file": file = string(v, p)
            case "dns": dns = string(v, p)
            case "port": port = int(v, p, range: 1...65535)
            case "refresh": refresh = duration(v, p, max: .seconds(3600))
            case "allowEmpty": allowEmpty = bool(v, p) ?? false
            default: break
            }
        }
        if let r = refresh, r < .milliseconds(100) {
            fail(join(path, "refresh"), node, .invalidValue(r.description, expected: "at least 100ms"))
        }
        switch (file, dns) {
        case (let f?, nil):
            if port != nil { fail(join(path, "port"), node, .invalid("'port' applies to dns discovery only")) }
            return DiscoveryConfig(source: .file(path: f), refresh: refresh ?? .seconds(1), allowEmpty: allowEmpty)
        case (nil, let name?):
            guard let port else {
                fail(path, node, .missingKey("port"))
                return nil
            }
            return DiscoveryConfig(source: .dns(name: name, port: port), refresh: refresh ?? .seconds(5), allowEmpty: allowEmpty)
        case (nil, nil):
            fail(path, node, .missingKey("file or dns"))
        default:
            fail(path, node, .invalid("give either 'file' or 'dns', not both"))
        }
        return nil
    }

    mutating func decodeEndpoint(_ node: Node, _ path: String) -> EndpointConfig? {
        if case .scalar = node {
            guard let address = address(node, path) else { return nil }
            return EndpointConfig(address: address)
        }
        guard let entries = mapping(node, path, allowed: ["address", "via", "weight", "zone", "node"]) else { return nil }
        var address: HostPort?
        var via: HostPort?
        var weight = 1
        var zone: String?
        var nodeName: String?
        for (k, v) in entries {
            let p = join(path, k)
            switch k {
            case "address": address = self.address(v, p)
            case "via": via = self.address(v, p)
            case "weight": if let w = int(v, p, range: 1...10_000) { weight = w }
            case "zone": zone = string(v, p)
            case "node": nodeName = string(v, p)
            default: break
            }
        }
        guard let address else {
            if !entries.contains(where: { $0.0 == "address" }) { fail(path, node, .missingKey("address")) }
            return nil
        }
        return EndpointConfig(address: address, via: via, weight: weight, zone: zone, node: nodeName)
    }
}
