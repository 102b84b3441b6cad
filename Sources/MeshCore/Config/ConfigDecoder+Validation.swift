import Yams

extension Decoder {
    // MARK: - Overrides and cross-field validation

    mutating func apply(_ o: ConfigLoader.Overrides, to config: inout MeshConfig) {
        if let mode = o.mode {
            if let m = MeshConfig.Mode(rawValue: mode) {
                config.mode = m
            } else {
                fail("mode", nil, .invalidValue(mode, expected: "sidecar or node (from MESHD_MODE or --mode)"))
            }
        }
        if let ip = o.nodeIP {
            if IPAddress(ip) != nil {
                config.nodeIP = ip
            } else {
                fail("nodeIP", nil, .invalidValue(ip, expected: "an IP address (from MESHD_NODE_IP or --node-ip)"))
            }
        }
        if let port = o.appPort {
            if let p = Int(port), (1...65535).contains(p) {
                config.inbound.app.port = p
            } else {
                fail("inbound.app", nil, .invalidValue(port, expected: "a port 1...65535 (from MESHD_APP_PORT)"))
            }
        }
        if let z = o.zone { config.locality.zone = z }
        if let n = o.nodeName { config.locality.node = n }
        if let t = o.threads {
            if (0...256).contains(t) {
                config.threads = t
            } else {
                fail("threads", nil, .invalidValue("\(t)", expected: "0...256 (from --threads)"))
            }
        }
    }

    mutating func validate(_ config: inout MeshConfig) {
        validateIdentity(config)
        if config.mode == .node && config.nodeIP == nil && config.outbound.listen == nil {
            // Pointed at the `mode: node` line that makes the key required.
            let mark = marks["mode"]
            problems.append(
                ConfigProblem(
                    path: "nodeIP", line: mark?.line, column: mark?.column,
                    reason: .missingKey("nodeIP (node mode binds the node's host IP; set nodeIP, MESHD_NODE_IP or --node-ip)")))
        }
        for (i, service) in config.services.enumerated() {
            if let pref = service.locality {
                let known = pref.prefer == .zone ? config.locality.zone : config.locality.node
                if known == nil {
                    let key = pref.prefer == .zone ? "locality.zone (or MESHD_ZONE)" : "locality.node (or MESHD_NODE_NAME)"
                    fail(at: "services[\(i)].locality", .invalid("prefer: \(pref.prefer.rawValue) needs this meshd's \(key)"))
                }
            }
        }
        for (i, service) in config.services.enumerated() {
            if service.protocol == .tcp && service.listen == nil {
                fail(at: "services[\(i)]", .missingKey("listen (a tcp service is reached through its own listener)"))
            }
            if service.protocol != .tcp && service.listen != nil {
                fail(at: "services[\(i)].listen", .invalid("'listen' applies to protocol: tcp services only"))
            }
        }
        var seen: [String: Int] = [:]
        for (i, service) in config.services.enumerated() where !service.name.isEmpty {
            if let first = seen[service.name] {
                fail(at: "services[\(i)].name", .invalid("duplicate service '\(service.name)' (first at services[\(first)])"))
            } else {
                seen[service.name] = i
            }
        }
        for (i, route) in config.routes.enumerated() {
            for (j, backend) in route.backends.enumerated() where seen[backend.service] == nil {
                let p = route.backends.count == 1 && j == 0 ? "routes[\(i)].service" : "routes[\(i)].backends[\(j)].service"
                fail(at: p, .invalid("unknown service '\(backend.service)'"))
            }
            if !route.backends.isEmpty && route.backends.allSatisfy({ $0.weight == 0 }) {
                fail(at: "routes[\(i)].backends", .invalid("at least one backend needs a weight above 0"))
            }
        }
    }
}
