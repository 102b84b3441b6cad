import NIOHTTP1
import Testing

@testable import MeshProxy

@Suite("Hop-by-hop headers removed before a message is forwarded")
struct HeaderRewriteTests {
    private func pairs(_ headers: HTTPHeaders) -> [String] { headers.map { "\($0.name): \($0.value)" } }

    @Test func anHTTP11ServersKeepAliveGoesAndTheRestKeepsItsOrder() {
        var headers: HTTPHeaders = [
            "Server": "nginx", "Date": "Sat, 05 Dec 2026 01:13:36 GMT", "Content-Type": "text/plain", "Content-Length": "3",
            "Connection": "keep-alive",
        ]
        headers.meshStripHopByHop(removeExpect: false)
        #expect(
            pairs(headers) == ["Server: nginx", "Date: Sat, 05 Dec 2026 01:13:36 GMT", "Content-Type: text/plain", "Content-Length: 3"])
    }

    @Test func withoutHopByHopHeadersNothingChanges() {
        var headers: HTTPHeaders = ["content-type": "text/plain", "content-length": "3", "expect": "100-continue"]
        headers.meshStripHopByHop(removeExpect: false)
        #expect(pairs(headers) == ["content-type: text/plain", "content-length: 3", "expect: 100-continue"])
        headers.meshStripHopByHop(removeExpect: true)
        #expect(pairs(headers) == ["content-type: text/plain", "content-length: 3"])
    }

    @Test func theFixedSetAndTheFieldsConnectionNamesGoInAnyCase() {
        var headers: HTTPHeaders = [
            "Keep-Alive": "timeout=5", "Proxy-Connection": "keep-alive", "Upgrade": "h2c", "Trailer": "x-sum",
            "X-Custom": "1", "x-custom": "2", "X-Kept": "3", "Proxy-Authorization": "Basic eA==",
            "Connection": "close, X-CUSTOM , upgrade", "Proxy-Authenticate": "Basic",
        ]
        headers.meshStripHopByHop(removeExpect: false)
        #expect(pairs(headers) == ["X-Kept: 3"])
    }

    @Test func chunkedFramingAndTETrailersAreAppliedAgain() {
        var headers: HTTPHeaders = ["Transfer-Encoding": "gzip, chunked", "TE": "trailers", "content-type": "application/grpc"]
        headers.meshStripHopByHop(removeExpect: false)
        #expect(pairs(headers) == ["content-type: application/grpc", "transfer-encoding: chunked", "te: trailers"])
        var identity: HTTPHeaders = ["transfer-encoding": "identity", "te": "gzip"]
        identity.meshStripHopByHop(removeExpect: false)
        #expect(pairs(identity).isEmpty)
    }

    @Test func aRequestWhoseScanFoundNoneIsLeftAsItIs() {
        var headers: HTTPHeaders = ["host": "bench", "user-agent": "wrk"]
        let scan = headers.meshScan()
        #expect(!scan.hasHopByHop)
        headers.meshStripHopByHop(scan, removeExpect: false)
        #expect(pairs(headers) == ["host: bench", "user-agent: wrk"])
        var upgrade: HTTPHeaders = ["host": "bench", "connection": "Upgrade", "upgrade": "websocket"]
        upgrade.meshStripHopByHop(upgrade.meshScan(), removeExpect: false)
        #expect(pairs(upgrade) == ["host: bench"])
    }

    @Test func aResponseScanReadsTheFirstGRPCStatusAndContentTypeInOnePass() {
        let cases: [HTTPHeaders] = [
            ["Server": "nginx", "Content-Type": "text/plain", "Content-Length": "3", "Connection": "keep-alive"],
            ["content-type": "application/grpc", "grpc-status": "0", "Grpc-Status": "13", "Transfer-Encoding": "chunked"],
            ["Content-Type": "text/html", "content-type": "text/plain", "GRPC-STATUS": "14"],
            ["grpc-statuses": "0", "content-types": "x", "date": "Sat, 05 Dec 2026 01:13:36 GMT"],
            [:],
        ]
        for headers in cases {
            let scan = headers.meshResponseScan()
            #expect(scan.grpcStatus == headers.first(name: "grpc-status"), "\(headers)")
            #expect(scan.contentType == headers.first(name: "content-type"), "\(headers)")
        }
    }
}
