// swift-tools-version: 6.2
import PackageDescription

// libFuzzer targets for mdegate, in a package of their own so that the root package's build, its
// tests and CI never see the sanitizer flags. Build and run them with `make fuzz`
// (scripts/fuzz.sh); see docs/fuzzing.md.
let package = Package(
    name: "mdegate-fuzz",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "FuzzRequest", targets: ["FuzzRequest"]),
        .executable(name: "FuzzConfig", targets: ["FuzzConfig"]),
    ],
    dependencies: [
        .package(name: "mdegate", path: ".."),
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
    ],
    targets: [
        // Declares libFuzzer's driver, which each target's main hands its fuzz function to.
        .target(name: "CFuzzerDriver"),
        // Raw bytes on a connection → NIOHTTP1 → the local API's routing and validation → a
        // gateway with a scripted upstream.
        .executableTarget(
            name: "FuzzRequest",
            dependencies: [
                "CFuzzerDriver",
                .product(name: "MDEGate", package: "mdegate"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // YAML + MDEGATE_* environment → a validated configuration or an error naming a key.
        .executableTarget(
            name: "FuzzConfig",
            dependencies: ["CFuzzerDriver", .product(name: "MDEGateConfig", package: "mdegate")]
        ),
    ]
)
