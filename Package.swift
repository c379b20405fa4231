// swift-tools-version: 6.2
import PackageDescription

let package = Package(
    name: "mdegate",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "mdegate", targets: ["mdegate"]),
        .executable(name: "mde-simulator", targets: ["MDESimulator"]),
        .executable(name: "mdegate-bench", targets: ["MDEGateBench"]),
        // For the fuzz targets in Fuzz/, a package of their own that depends on this one.
        .library(name: "MDEGate", targets: ["MDEGate"]),
        .library(name: "MDEGateConfig", targets: ["MDEGateConfig"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-nio-extras", from: "1.35.2"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-collections", from: "1.6.0"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
        .package(
            url: "https://github.com/apple/swift-configuration",
            from: "1.4.0",
            traits: [.defaults, "YAML"]
        ),
        .package(url: "https://github.com/groue/GRDB.swift", from: "7.10.0"),
        .package(url: "https://github.com/apple/swift-crypto", from: "4.5.2"),
        .package(url: "https://github.com/apple/swift-certificates", from: "1.21.1"),
        .package(url: "https://github.com/apple/swift-asn1", from: "1.7.4"),
        .package(url: "https://github.com/apple/swift-nio-ssl", from: "2.37.6"),
        .package(url: "https://github.com/x-sheep/swift-property-based", from: "2.0.1"),
        .package(url: "https://github.com/vapor/postgres-nio", from: "1.33.2"),
        .package(url: "https://github.com/apple/swift-metrics", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
        .package(url: "https://github.com/vapor/jwt-kit", from: "5.8.0"),
        .package(url: "https://github.com/apple/swift-http-types", from: "1.8.0"),
        .package(url: "https://github.com/swiftlang/swift-subprocess", from: "1.0.2"),
    ],
    targets: [
        // libcurl from Debian, with typed wrappers for its variadic calls.
        .systemLibrary(
            name: "CCurl",
            pkgConfig: "libcurl",
            providers: [.apt(["libcurl4-openssl-dev"])]
        ),
        // Small Linux glue Swift cannot see directly (struct ucred).
        .target(name: "CMDEGateSystem"),

        // The quota model and scheduling policy: pure, no I/O, no clock of its own.
        .target(
            name: "MDEGateCore",
            dependencies: [.product(name: "DequeModule", package: "swift-collections")],
            linkerSettings: [.linkedLibrary("m")]
        ),
        // The upstream HTTP transport: libcurl's multi interface on a thread of its own.
        .target(
            name: "MDEGateTransport",
            dependencies: [
                "CCurl",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "HTTPTypes", package: "swift-http-types"),
            ]
        ),
        // The YAML configuration with environment overrides, and its validation.
        .target(
            name: "MDEGateConfig",
            dependencies: [
                "MDEGateCore",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Configuration", package: "swift-configuration"),
            ]
        ),
        // The local API's documents (status, request record, errors) and the one JSON setup:
        // shared by the daemon, the command line client and the tests.
        .target(
            name: "MDEGateWire",
            dependencies: ["MDEGateCore", .product(name: "HTTPTypes", package: "swift-http-types")]
        ),
        // The ledger several hosts share, in PostgreSQL (shared_quota): schema and slot decisions.
        .target(
            name: "MDEGateSharedQuota",
            dependencies: [
                "MDEGateCore",
                .product(name: "PostgresNIO", package: "postgres-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // The command line's client of a running gateway, and its human-readable renderings.
        .target(name: "MDEGateClient", dependencies: ["MDEGateWire", "MDEGateTransport"]),
        // The daemon: gateway, store, Unix socket server, token sources, systemd glue.
        .target(
            name: "MDEGate",
            dependencies: [
                "MDEGateCore",
                "MDEGateWire",
                "MDEGateConfig",
                "MDEGateTransport",
                "MDEGateSharedQuota",
                "CMDEGateSystem",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOExtras", package: "swift-nio-extras"),
                .product(name: "NIOHTTPTypesHTTP1", package: "swift-nio-extras"),
                .product(name: "HTTPTypes", package: "swift-http-types"),
                .product(name: "GRDB", package: "GRDB.swift"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Configuration", package: "swift-configuration"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "_CryptoExtras", package: "swift-crypto"),
                .product(name: "X509", package: "swift-certificates"),
                .product(name: "SwiftASN1", package: "swift-asn1"),
                .product(name: "CoreMetrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "JWTKit", package: "jwt-kit"),
            ]
        ),
        .executableTarget(
            name: "mdegate",
            dependencies: [
                "MDEGate",
                "MDEGateSharedQuota",
                .product(name: "Logging", package: "swift-log"),
                "MDEGateClient",
                "MDEGateWire",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        // A local stand-in for the MDE API, for tests, the demo and offline users.
        .executableTarget(
            name: "MDESimulator",
            dependencies: [
                "MDEGateCore",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "_CryptoExtras", package: "swift-crypto"),
                .product(name: "X509", package: "swift-certificates"),
                .product(name: "JWTKit", package: "jwt-kit"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        // The child processes of the integration tests and the benchmarks: started, their output
        // awaited line by line, stopped (swift-subprocess underneath).
        .target(
            name: "ProcessHarness",
            dependencies: [.product(name: "Subprocess", package: "swift-subprocess")]
        ),
        // Benchmarks against the real daemon and simulator; figures for the docs, not tests.
        .executableTarget(
            name: "MDEGateBench",
            dependencies: [
                "MDEGateCore",
                "MDEGateTransport",
                "MDEGateWire",
                "ProcessHarness",
                .product(name: "HTTPTypes", package: "swift-http-types"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),

        .testTarget(
            name: "MDEGateCoreTests",
            dependencies: [
                "MDEGateCore",
                .product(name: "PropertyBased", package: "swift-property-based"),
            ]
        ),
        .testTarget(name: "MDEGateConfigTests", dependencies: ["MDEGateConfig"]),
        .testTarget(
            name: "MDEGateTests",
            dependencies: [
                "MDEGate", "MDEGateWire", "MDEGateClient", "ProcessHarness",
                .product(name: "HTTPTypes", package: "swift-http-types"),
            ]
        ),
        .testTarget(
            name: "IntegrationTests",
            dependencies: [
                "MDEGateTransport",
                "MDEGateCore",
                "MDEGateWire",
                "ProcessHarness",
                .product(name: "HTTPTypes", package: "swift-http-types"),
                // The shared quota's tests start a throwaway PostgreSQL server.
                "MDEGateSharedQuota",
                .product(name: "PostgresNIO", package: "postgres-nio"),
                // For the loopback CONNECT proxy the proxy tests put between gateway and simulator.
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ]
        ),
    ]
)
