import MeshCore
import Testing

@Suite struct SpiffeIDTests {
    @Test func parsesWorkloadIDs() throws {
        let id = try #require(SpiffeID("spiffe://cluster.local/ns/shop/sa/web"))
        #expect(id.trustDomain == "cluster.local")
        #expect(id.path == "/ns/shop/sa/web")
        #expect(id.namespace == "shop")
        #expect(id.serviceAccount == "web")
        #expect(id.description == "spiffe://cluster.local/ns/shop/sa/web")
        #expect(SpiffeID("spiffe://cluster.local")?.path == "")
    }

    @Test(arguments: [
        "", "http://cluster.local/ns/a", "spiffe://", "spiffe://Cluster.local/ns/a", "spiffe://cluster.local/ns//a",
        "spiffe://cluster.local/ns/a/", "spiffe://cluster.local/ns/../a", "spiffe://cluster.local/./a",
        "spiffe://cluster.local:443/ns/a", "spiffe://user@cluster.local/ns/a", "spiffe://cluster.local/ns/a?x=1",
        "spiffe://cluster.local/ns/a#f", "spiffe://cluster.local/ns/a b",
    ])
    func rejectsInvalidIDs(_ text: String) {
        #expect(SpiffeID(text) == nil)
    }

    @Test func rejectsOverlongIDs() {
        #expect(SpiffeID("spiffe://td/" + String(repeating: "a", count: 2100)) == nil)
    }

    @Test func patterns() throws {
        let web = try #require(SpiffeID("spiffe://cluster.local/ns/shop/sa/web"))
        let other = try #require(SpiffeID("spiffe://other.local/ns/shop/sa/web"))
        let shopOps = try #require(SpiffeID("spiffe://cluster.local/ns/shopping/sa/x"))
        #expect(IdentityPattern("spiffe://cluster.local/ns/shop/sa/web")?.matches(web) == true)
        #expect(IdentityPattern("spiffe://cluster.local/ns/shop/sa/api")?.matches(web) == false)
        #expect(IdentityPattern("spiffe://cluster.local/ns/shop/*")?.matches(web) == true)
        // A prefix ends at a segment boundary: ns/shop/* does not take ns/shopping.
        #expect(IdentityPattern("spiffe://cluster.local/ns/shop/*")?.matches(shopOps) == false)
        #expect(IdentityPattern("spiffe://cluster.local/ns/shop/*")?.matches(other) == false)
        #expect(IdentityPattern("spiffe://cluster.local/*")?.matches(web) == true)
        // Only IDs under the prefix: not the prefix's own ID, nor the trust domain's.
        #expect(
            IdentityPattern("spiffe://cluster.local/ns/shop/*")?.matches(try #require(SpiffeID("spiffe://cluster.local/ns/shop"))) == false)
        #expect(IdentityPattern("spiffe://cluster.local/*")?.matches(try #require(SpiffeID("spiffe://cluster.local"))) == false)
        #expect(IdentityPattern("*")?.matches(other) == true)
        #expect(IdentityPattern("spiffe://cluster.local/ns/*/sa/web") == nil)
        #expect(IdentityPattern("web") == nil)
        #expect(IdentityPattern("spiffe://cluster.local/ns/shop/*")?.description == "spiffe://cluster.local/ns/shop/*")
    }

    @Test func podServerNamesRoundTrip() throws {
        for text in ["10.42.0.5", "127.0.0.1", "fd00::5", "2001:db8::1:0:0:1"] {
            let ip = try #require(IPAddress(text))
            let name = PodServerName.encode(ip)
            #expect(name.hasSuffix(".pod.meshd"))
            #expect(!name.contains(":"))
            #expect(PodServerName.decode(name) == ip)
        }
        #expect(PodServerName.encode(IPAddress("10.42.0.5")!) == "10-42-0-5.pod.meshd")
        #expect(PodServerName.decode("web.shop.svc") == nil)
        #expect(PodServerName.decode("10-42-0.pod.meshd") == nil)
        #expect(PodServerName.decode("10-42-0-999.pod.meshd") == nil)
    }
}

@Suite struct AuthorizationPolicyTests {
    let web = SpiffeID("spiffe://cluster.local/ns/shop/sa/web")!
    let ops = SpiffeID("spiffe://cluster.local/ns/ops/sa/admin")!
    let orders = SpiffeID("spiffe://cluster.local/ns/shop/sa/orders")!
    let api = SpiffeID("spiffe://cluster.local/ns/shop/sa/api")!

    @Test func defaultPolicies() {
        #expect(AuthorizationPolicy().decide(caller: nil, destination: api, path: "/") == .allow(rule: nil))
        #expect(AuthorizationPolicy().allowsEveryone)
        let authn = AuthorizationPolicy(defaultPolicy: .allAuthenticated)
        #expect(authn.decide(caller: nil, destination: api, path: "/") == .deny(rule: nil))
        #expect(authn.decide(caller: web, destination: api, path: "/") == .allow(rule: nil))
        let deny = AuthorizationPolicy(defaultPolicy: .deny)
        #expect(deny.decide(caller: web, destination: api, path: "/") == .deny(rule: nil))
        #expect(deny.decide(caller: web, destination: api, path: "/").ruleLabel == "default")
    }

    @Test func rulesProtectWhatTheyName() {
        let policy = AuthorizationPolicy(
            defaultPolicy: .allUnauthenticated,
            rules: [
                .init(to: .exact(orders), from: [.exact(web), IdentityPattern("spiffe://cluster.local/ns/ops/*")!], pathPrefix: "/api/")
            ])
        #expect(policy.decide(caller: web, destination: orders, path: "/api/x") == .allow(rule: 0))
        #expect(policy.decide(caller: ops, destination: orders, path: "/api/x") == .allow(rule: 0))
        // Protected: only the listed callers, never an unauthenticated one.
        #expect(policy.decide(caller: api, destination: orders, path: "/api/x") == .deny(rule: 0))
        #expect(policy.decide(caller: nil, destination: orders, path: "/api/x") == .deny(rule: 0))
        #expect(policy.decide(caller: api, destination: orders, path: "/api/x").ruleLabel == "rule-0")
        // Not protected (another path, another workload): the default policy.
        #expect(policy.decide(caller: nil, destination: orders, path: "/health") == .allow(rule: nil))
        #expect(policy.decide(caller: api, destination: api, path: "/api/x") == .allow(rule: nil))
        #expect(policy.decide(caller: api, destination: nil, path: "/api/x") == .allow(rule: nil))
    }

    @Test func anyRuleForTheTargetMayAllow() {
        let policy = AuthorizationPolicy(
            defaultPolicy: .deny, rules: [.init(from: [.exact(web)]), .init(from: [.exact(ops)], pathPrefix: "/admin")])
        #expect(policy.decide(caller: ops, destination: api, path: "/admin/x") == .allow(rule: 1))
        #expect(policy.decide(caller: web, destination: api, path: "/admin/x") == .allow(rule: 0))
        #expect(policy.decide(caller: ops, destination: api, path: "/x") == .deny(rule: 0))
    }
}

@Suite struct IdentityConfigTests {
    @Test func decodesIdentityTLSAndAuthorization() throws {
        let c = try ConfigLoader.load(
            yaml: """
                mode: node
                nodeIP: 10.0.0.1
                node: {podCIDRs: [10.42.0.0/24]}
                identity:
                  trustBundle: /tls/ca.crt
                  workloads:
                    - {pods: [10.42.0.5, 10.42.0.6], cert: /tls/web/tls.crt, key: /tls/web/tls.key}
                  handshakeTimeout: 5s
                inbound: {tls: strict}
                authorization:
                  defaultPolicy: all-authenticated
                  rules:
                    - {to: spiffe://cluster.local/ns/shop/sa/orders, from: [spiffe://cluster.local/ns/shop/sa/web], pathPrefix: /api/}
                services:
                  - name: orders
                    endpoints: [{address: 10.42.1.7:8080, via: 10.0.0.2:4143}]
                    tls: {identity: spiffe://cluster.local/ns/shop/*}
                routes:
                  - {match: {authority: orders}, service: orders}
                """)
        #expect(c.identity?.workloads.first?.pods == [IPAddress("10.42.0.5")!, IPAddress("10.42.0.6")!])
        #expect(c.identity?.handshakeTimeout == .seconds(5))
        #expect(c.effectiveInboundTLS == .strict)
        #expect(c.authorization.defaultPolicy == .allAuthenticated)
        #expect(c.authorization.rules.first?.pathPrefix == "/api/")
        #expect(c.services[0].tls?.identity == IdentityPattern("spiffe://cluster.local/ns/shop/*"))
    }

    @Test func defaultsFollowTheIdentity() throws {
        #expect(try ConfigLoader.load(yaml: "").effectiveInboundTLS == .disabled)
        let c = try ConfigLoader.load(yaml: "identity: {trustBundle: /ca.crt, cert: /tls.crt, key: /tls.key}")
        #expect(c.effectiveInboundTLS == .permissive)
    }

    @Test(arguments: [
        "inbound: {tls: strict}",
        "inbound: {tls: sometimes}",
        "identity: {cert: /a, key: /b}",
        "identity: {trustBundle: /ca, cert: /a}",
        "identity: {trustBundle: /ca, cert: /a, key: /b, workloads: [{pods: [10.0.0.1], cert: /c, key: /d}]}",
        "identity: {trustBundle: /ca, cert: /a, key: /b}\nservices: [{name: s, endpoints: [{address: 1.2.3.4:80}], tls: {identity: web}}]",
        "services: [{name: s, endpoints: [{address: 1.2.3.4:80}], tls: {identity: '*'}}]",
        "authorization: {defaultPolicy: allow}",
        "authorization: {rules: [{pathPrefix: /x}]}",
        "authorization: {rules: [{from: [spiffe://td/ns/a], pathPrefix: x}]}",
    ])
    func rejectsBadIdentityConfig(_ yaml: String) {
        #expect(throws: ConfigError.self) { try ConfigLoader.load(yaml: yaml) }
    }
}
