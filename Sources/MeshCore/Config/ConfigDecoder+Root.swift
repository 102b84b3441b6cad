import Yams

extension Decoder {
    static let rootKeys = [
        "mode", "nodeIP", "threads", "outbound", "inbound", "admin", "node", "http", "http2", "upstream", "drainTimeout",
        "accessLog", "services", "routes", "locality",
    ]

    mutating func decodeRoot(_ root: Node, into config: inout MeshConfig) {
        if case .scalar(let s) = root, s.string.isEmpty { return }  // an empty document
        guard let entries = mapping(root, "", allowed: Self.rootKeys) else { return }
        for (key, value) in entries {
            switch key {
            case "mode":
                marks["mode"] = value.mark
                if let text = string(value, key) {
                    if let mode = MeshConfig.Mode(rawValue: text) {
                        config.mode = mode
                    } else {
                        fail(key, value, .invalidValue(text, expected: "sidecar or node"))
                    }
                }
            case "nodeIP":
                if let text = string(value, key) {
                    if IPAddress(text) != nil {
                        config.nodeIP = text
                    } else {
                        fail(key, value, .invalidValue(text, expected: "an IP address"))
                    }
                }
            case "threads": if let v = int(value, key, range: 0...256) { config.threads = v }
            case "outbound":
                if let e = mapping(value, key, allowed: ["listen", "protocol"]) {
                    for (k, v) in e {
                        if k == "listen" { config.outbound.listen = address(v, "outbound.listen", allowPortZero: true) }
                        if k == "protocol", let p = listenerProtocol(v, "outbound.protocol") { config.outbound.protocol = p }
                    }
                }
            case "inbound":
                if let e = mapping(value, key, allowed: ["listen", "app", "protocol", "appProtocol"]) {
                    for (k, v) in e {
                        if k == "appProtocol", let text = string(v, "inbound.appProtocol") {
                            if let p = UpstreamProtocol(rawValue: text) {
                                config.inbound.appProtocol = p
                            } else {
                                fail("inbound.appProtocol", v, .invalidValue(text, expected: "auto, http1, http2 or grpc"))
                            }
                        }
                        if k == "listen" { config.inbound.listen = address(v, "inbound.listen", allowPortZero: true) }
                        if k == "protocol", let p = listenerProtocol(v, "inbound.protocol") { config.inbound.protocol = p }
                        if k == "app", let a = address(v, "inbound.app") { config.inbound.app = a }
                    }
                }
            case "admin":
                if let e = mapping(value, key, allowed: ["listen"]) {
                    for (_, v) in e {
                        if let a = address(v, "admin.listen", allowPortZero: true) { config.admin.listen = a }
                    }
                }
            case "node":
                if let e = mapping(value, key, allowed: ["podCIDRs", "allowedSources"]) {
                    for (k, v) in e {
                        if k == "podCIDRs", let c = cidrs(v, "node.podCIDRs") { config.node.podCIDRs = c }
                        if k == "allowedSources", let c = cidrs(v, "node.allowedSources") {
                            config.node.allowedSources = c
                        }
                    }
                }
            case "locality":
                if let e = mapping(value, key, allowed: ["zone", "node"]) {
                    for (k, v) in e {
                        if k == "zone" { config.locality.zone = string(v, "locality.zone") }
                        if k == "node" { config.locality.node = string(v, "locality.node") }
                    }
                }
            case "http": decode(value, key, ConfigKeys.http, into: &config.http)
            case "upstream": decode(value, key, ConfigKeys.upstream, into: &config.upstream)
            case "http2": decode(value, key, ConfigKeys.http2, into: &config.http2)
            case "drainTimeout": if let d = duration(value, key, max: .seconds(3600)) { config.drainTimeout = d }
            case "accessLog": if let b = bool(value, key) { config.accessLog = b }
            case "services":
                guard let items = sequence(value) else {
                    fail(key, value, .wrongType(expected: "a list of services"))
                    continue
                }
                config.services = items.enumerated().compactMap { decodeService($1, "services[\($0)]") }
            case "routes":
                guard let items = sequence(value) else {
                    fail(key, value, .wrongType(expected: "a list of routes"))
                    continue
                }
                config.routes = items.enumerated().compactMap { decodeRoute($1, "routes[\($0)]") }
            default: break
            }
        }
    }
}
