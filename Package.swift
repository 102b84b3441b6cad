// swift-tools-version:6.0
import PackageDescription

/// Release builds of meshd's own targets skip run-time exclusivity checks: all mutable state is
/// confined to one event loop (see docs/architecture.md), and the checks cost ~3 % of CPU per request
/// in the HTTP/1.1 benchmark. Debug builds (and so `swift test`) keep them.
/// The project's own targets build with warnings as errors (dependencies keep their own settings).
let releaseSettings: [SwiftSetting] = [
    .unsafeFlags(["-enforce-exclusivity=unchecked"], .when(configuration: .release)),
    .unsafeFlags(["-warnings-as-errors"]),
]

let package = Package(
    name: "meshd",
    platforms: [.macOS(.v14)],
    products: [
        .library(name: "MeshCore", targets: ["MeshCore"]),
        .executable(name: "meshd", targets: ["meshd"]),
        .executable(name: "meshctl", targets: ["meshctl"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-metrics.git", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus.git", from: "2.4.1"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.13.0"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.2"),
        .package(url: "https://github.com/jpsim/Yams.git", from: "6.2.2"),
        .package(url: "https://github.com/apple/swift-atomics.git", from: "1.3.0"),
        .package(url: "https://github.com/apple/swift-nio-extras.git", from: "1.35.2"),
        .package(url: "https://github.com/HdrHistogram/hdrhistogram-swift.git", from: "0.2.0"),
        .package(url: "https://github.com/apple/swift-nio-http2.git", from: "1.46.0"),
        .package(url: "https://github.com/apple/swift-nio-ssl.git", from: "2.37.6"),
        .package(url: "https://github.com/apple/swift-certificates.git", from: "1.21.1"),
        .package(url: "https://github.com/apple/swift-crypto.git", from: "4.5.2"),
        .package(url: "https://github.com/apple/swift-asn1.git", from: "1.7.4"),
    ],
    targets: [
        .target(
            name: "MeshCore",
            dependencies: [
                .product(name: "Yams", package: "Yams"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: releaseSettings
        ),
        // The C library's heap statistics (glibc's mallinfo2), which Swift's Glibc module does not export.
        .target(name: "CMeshSystem"),
        .target(
            name: "MeshProxy",
            dependencies: [
                "CMeshSystem",
                "MeshCore",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Atomics", package: "swift-atomics"),
                .product(name: "NIOExtras", package: "swift-nio-extras"),
                .product(name: "NIOHTTP2", package: "swift-nio-http2"),
                .product(name: "NIOHPACK", package: "swift-nio-http2"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "NIOTLS", package: "swift-nio"),
                .product(name: "X509", package: "swift-certificates"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "SwiftASN1", package: "swift-asn1"),
            ],
            swiftSettings: releaseSettings
        ),
        .executableTarget(name: "meshd", dependencies: ["MeshProxy"], swiftSettings: releaseSettings),
        .executableTarget(
            name: "meshctl",
            dependencies: [
                "MeshCore",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Histogram", package: "hdrhistogram-swift"),
                .product(name: "Yams", package: "Yams"),
                .product(name: "NIOHTTP2", package: "swift-nio-http2"),
                .product(name: "X509", package: "swift-certificates"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "SwiftASN1", package: "swift-asn1"),
            ],
            swiftSettings: releaseSettings
        ),
        .testTarget(name: "MeshCoreTests", dependencies: ["MeshCore"], swiftSettings: releaseSettings),
        .testTarget(
            name: "meshctlTests",
            dependencies: [
                "meshctl",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "Histogram", package: "hdrhistogram-swift"),
                .product(name: "Yams", package: "Yams"),
            ],
            swiftSettings: releaseSettings
        ),
        .testTarget(
            name: "MeshProxyTests",
            dependencies: [
                "MeshProxy",
                "MeshCore",
                .product(name: "Atomics", package: "swift-atomics"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOHTTP2", package: "swift-nio-http2"),
            ],
            swiftSettings: releaseSettings
        ),
    ]
)

// libFuzzer targets (scripts/fuzz.sh): built only when MESHD_FUZZ is set, with -sanitize=fuzzer,address.
if Context.environment["MESHD_FUZZ"] != nil {
    package.targets.append(
        .executableTarget(
            name: "MeshFuzz", dependencies: ["MeshCore"], path: "Fuzz", exclude: ["corpus"],
            swiftSettings: [.unsafeFlags(["-parse-as-library"])]))
}
