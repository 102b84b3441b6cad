// swift-tools-version:6.0
import PackageDescription

// Measuring harnesses, not part of meshd: forwarding cores reduced to what NIO itself costs (see
// README.md here and docs/performance.md). `h2floor`: the two candidate designs for an h2 → h2
// passthrough. `h1floor`: an HTTP/1.1 proxy on NIO's HTTP/1 codec, and a byte pipe on NIO's sockets.
let package = Package(
    name: "floor",
    platforms: [.macOS(.v14)],
    dependencies: [
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-nio-http2.git", from: "1.46.0"),
    ],
    targets: [
        .target(
            name: "FloorSupport",
            dependencies: [.product(name: "NIOCore", package: "swift-nio")],
            swiftSettings: [.unsafeFlags(["-enforce-exclusivity=unchecked"], .when(configuration: .release))]
        ),
        .executableTarget(
            name: "h2floor",
            dependencies: [
                "FloorSupport",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP2", package: "swift-nio-http2"),
                .product(name: "NIOHPACK", package: "swift-nio-http2"),
            ],
            swiftSettings: [.unsafeFlags(["-enforce-exclusivity=unchecked"], .when(configuration: .release))]
        ),
        .executableTarget(
            name: "h1floor",
            dependencies: [
                "FloorSupport",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
            ],
            swiftSettings: [.unsafeFlags(["-enforce-exclusivity=unchecked"], .when(configuration: .release))]
        ),
    ]
)
