import Foundation
import MDEGateConfig
import Testing

/// A fresh directory under the system's temporary directory, removed when the test is done.
final class TemporaryDirectory {
    let path: String

    init() throws {
        path = URL(fileURLWithPath: NSTemporaryDirectory()).appendingPathComponent("mdegate-config-tests-" + UUID().uuidString).path
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    }

    /// Writes `contents` to `name` inside the directory and returns the file's path.
    func write(_ contents: String, to name: String = "config.yaml") throws -> String {
        let file = path + "/" + name
        try Data(contents.utf8).write(to: URL(fileURLWithPath: file))
        return file
    }

    deinit { try? FileManager.default.removeItem(atPath: path) }
}

/// Credentials, since no configuration is valid without them.
let tokenFileOnly = ["MDEGATE_AUTH_TOKEN_FILE": "/run/mdegate/token"]

/// Loads `yaml` from a real file (nil: no file) with `environment`, from working directory `/srv`.
func load(_ yaml: String?, environment: [String: String] = tokenFileOnly) throws -> LoadedConfiguration {
    let directory = try TemporaryDirectory()
    let path = try yaml.map { try directory.write($0) }
    return try GatewayConfiguration.load(path: path, environment: environment, workingDirectory: "/srv")
}

/// The error that loading `yaml` with `environment` throws; records an issue when it loads.
func refusal(
    _ yaml: String?, environment: [String: String] = tokenFileOnly,
    sourceLocation: SourceLocation = #_sourceLocation
) -> ConfigurationError? {
    #expect(throws: ConfigurationError.self, sourceLocation: sourceLocation) {
        try load(yaml, environment: environment)
    }
}
