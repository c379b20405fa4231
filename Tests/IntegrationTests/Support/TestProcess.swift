import Foundation
import ProcessHarness

/// The tests' child processes: ProcessHarness's `ChildProcess`, the one harness the benchmarks
/// use too (swift-subprocess underneath).
typealias TestProcess = ChildProcess
typealias ProcessEnd = ProcessHarness.ProcessEnd
typealias OutputStream = ProcessHarness.OutputStream

extension ChildProcess {
    /// Starts one of the project's binaries, or any executable, with exactly `environment`.
    convenience init(
        name: String, executable: URL, arguments: [String], environment: [String: String], workingDirectory: String? = nil
    ) async throws {
        guard FileManager.default.isExecutableFile(atPath: executable.path) else {
            throw HarnessError("\(name): no executable at \(executable.path); build it first (swift build --build-tests) or set MDEGATE_BIN_DIR")
        }
        try await self.init(
            name: name, executable: executable.path, arguments: arguments, environment: environment,
            workingDirectory: workingDirectory)
    }

    /// The environment children get: this process's, minus every `MDEGATE_` override that would
    /// change the daemon's configuration behind the test's back, plus `extra`.
    static func environment(adding extra: [String: String] = [:]) -> [String: String] {
        ProcessInfo.processInfo.environment
            .filter { !$0.key.hasPrefix("MDEGATE_") }
            .merging(extra) { _, new in new }
    }
}
