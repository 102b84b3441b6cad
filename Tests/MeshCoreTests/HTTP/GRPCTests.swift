import Testing

@testable import MeshCore

@Suite("gRPC")
struct GRPCTests {
    @Test func contentTypes() {
        #expect(GRPC.isGRPC(contentType: "application/grpc"))
        #expect(GRPC.isGRPC(contentType: "application/grpc+proto"))
        #expect(GRPC.isGRPC(contentType: "Application/GRPC;charset=utf-8"))
        #expect(!GRPC.isGRPC(contentType: "application/grpc-web"))
        #expect(!GRPC.isGRPC(contentType: "application/json"))
        #expect(!GRPC.isGRPC(contentType: "application/grp"))
        #expect(!GRPC.isGRPC(contentType: ""))
        #expect(!GRPC.isGRPC(contentType: "application/grpcx"))
        #expect(!GRPC.isGRPC(contentType: " application/grpc"))
        #expect(GRPC.isGRPC(contentType: "APPLICATION/GRPC+JSON"))
        // A value longer than a small string's inline storage, and one NIO's parser handed over as a slice.
        #expect(GRPC.isGRPC(contentType: "application/grpc+proto; charset=utf-8; x-padding=0123456789"))
        #expect(GRPC.isGRPC(contentType: String("xapplication/grpc".dropFirst())))
    }

    @Test func timeouts() {
        #expect(GRPC.parseTimeout("100m") == .milliseconds(100))
        #expect(GRPC.parseTimeout("1S") == .seconds(1))
        #expect(GRPC.parseTimeout("2M") == .seconds(120))
        #expect(GRPC.parseTimeout("1H") == .seconds(3600))
        #expect(GRPC.parseTimeout("250u") == MeshDuration(nanoseconds: 250_000))
        #expect(GRPC.parseTimeout("7n") == MeshDuration(nanoseconds: 7))
        #expect(GRPC.parseTimeout("99999999H") != nil)  // saturates, no overflow trap
        // Malformed: no unit, unknown unit, too many digits, sign, empty.
        #expect(GRPC.parseTimeout("100") == nil)
        #expect(GRPC.parseTimeout("10x") == nil)
        #expect(GRPC.parseTimeout("123456789m") == nil)
        #expect(GRPC.parseTimeout("-1S") == nil)
        #expect(GRPC.parseTimeout("m") == nil)
        #expect(GRPC.parseTimeout("") == nil)
    }

    @Test func formatsTimeoutsThatParseBack() {
        for ms: Int64 in [1, 99, 100, 1500, 60_000] {
            let d = MeshDuration.milliseconds(ms)
            let back = GRPC.parseTimeout(GRPC.formatTimeout(d))
            #expect(back == d, "\(ms) ms")
        }
    }

    @Test func messagesArePercentEncoded() {
        #expect(GRPC.percentEncode("no route for 'x'") == "no route for 'x'")
        #expect(GRPC.percentEncode("100%") == "100%25")
        #expect(GRPC.percentEncode("a\nb") == "a%0Ab")
        #expect(GRPC.percentEncode("café") == "caf%C3%A9")
    }

    @Test func statusNamesAndLocalErrors() {
        #expect(GRPC.codeName(0) == "OK")
        #expect(GRPC.codeName(14) == "UNAVAILABLE")
        #expect(GRPC.codeName(99) == "UNKNOWN")
        #expect(GRPC.status("14") == 14)
        #expect(GRPC.status("x") == nil)
        #expect(GRPC.status("-1") == nil)
        #expect(GRPC.status("") == nil)
        #expect(GRPC.status(nil as String?) == nil)
        #expect(MeshError.noRoute.grpcStatus == 12)
        #expect(MeshError.noEndpoints.grpcStatus == 14)
        #expect(MeshError.connectFailed.grpcStatus == 14)
        #expect(MeshError.upstreamReset.grpcStatus == 14)
        #expect(MeshError.upstreamTimeout.grpcStatus == 4)
        #expect(MeshError.overflowRequests.grpcStatus == 8)
        #expect(MeshError.overflowPending.grpcStatus == 8)
        #expect(MeshError.rateLimited.grpcStatus == 8)
    }
}
