// swift-tools-version: 6.2
import PackageDescription

// libFuzzer targets for mdegate, in a package of their own so that the root package's build, its
// tests and CI never see the sanitizer flags. Build and run them with `make fuzz`
// (scripts/fuzz.sh); see docs/fuzzing.md.
let package = Package(
    name: "mdegate-fuzz",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "FuzzConfig", targets: ["FuzzConfig"]),
    ],
    dependencies: [
        .package(name: "mdegate", path: ".."),
    ],
    targets: [
        // Declares libFuzzer's driver, which each target's main hands its fuzz function to.
        .target(name: "CFuzzerDriver"),
        // YAML + MDEGATE_* environment → a validated configuration or an error naming a key.
        .executableTarget(
            name: "FuzzConfig",
            dependencies: ["CFuzzerDriver", .product(name: "MDEGateConfig", package: "mdegate")]
        ),
    ]
)
