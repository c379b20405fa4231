import Foundation

/// The tools besides Swift that the contract and README tests run: schemathesis, the OpenAPI
/// validator and Python's httpx in the checkout's own virtual environment, and Node.js.
/// `scripts/install-test-tools.sh` (run by `scripts/install-deps.sh --tests`) installs them.
enum ExternalTools {
    /// The checkout, found from this file's place in it.
    static let packageRoot: URL = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent()  // Support
        .deletingLastPathComponent()  // IntegrationTests
        .deletingLastPathComponent()  // Tests
        .deletingLastPathComponent()  // the package

    /// The virtual environment `scripts/install-test-tools.sh` makes.
    static let pythonEnvironment = packageRoot.appendingPathComponent(".build/test-python", isDirectory: true)

    static func python() throws -> URL { try environmentTool("python") }
    static func schemathesis() throws -> URL { try environmentTool("schemathesis") }
    static func openAPISpecValidator() throws -> URL { try environmentTool("openapi-spec-validator") }

    static func node() throws -> URL {
        guard let node = SystemdTools.executable("node") else {
            throw HarnessError("no node on PATH; scripts/install-deps.sh --tests installs Debian's nodejs")
        }
        return node
    }

    private static func environmentTool(_ name: String) throws -> URL {
        let tool = pythonEnvironment.appendingPathComponent("bin/\(name)")
        guard FileManager.default.isExecutableFile(atPath: tool.path) else {
            throw HarnessError("no \(tool.path); run scripts/install-deps.sh --tests (it makes that virtual environment)")
        }
        return tool
    }

    /// Runs `executable` in `directory` (a throwaway one of the test's, so that no tool leaves
    /// files in the checkout) to its end, bounded by `timeout`, and returns how it ended and what
    /// it printed. Standard input is empty.
    static func run(
        _ executable: URL, _ arguments: [String], in directory: TemporaryDirectory,
        environment: [String: String] = [:], timeout: Duration = .seconds(60)
    ) async throws -> CommandResult {
        try await CommandResult.run(
            name: executable.lastPathComponent, executable: executable, arguments: arguments,
            environment: TestProcess.environment(adding: ["NO_COLOR": "1", "PYTHONDONTWRITEBYTECODE": "1"].merging(environment) { _, new in new }),
            workingDirectory: directory.path, timeout: timeout)
    }
}
