import Foundation

/// The systemd tools that work without systemd as PID 1, and the repository's unit files.
enum SystemdTools {
    /// `systemd-analyze`, if installed (`verify`, `security --offline=true`).
    static let analyze = executable("systemd-analyze")
    /// `systemd-socket-activate`, if installed: listens like a socket unit and execs the daemon.
    static let socketActivate = executable("systemd-socket-activate")
    static let sysusers = executable("systemd-sysusers")
    static let tmpfiles = executable("systemd-tmpfiles")

    /// The repository's `systemd/` directory, found from this file's place in the checkout.
    static let unitDirectory: URL = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent()  // Support
        .deletingLastPathComponent()  // IntegrationTests
        .deletingLastPathComponent()  // Tests
        .deletingLastPathComponent()  // the package
        .appendingPathComponent("systemd", isDirectory: true)

    /// `-E NAME` for each sanitizer setting in this process's environment: systemd-socket-activate
    /// hands the daemon only PATH, HOME, USER, TERM and what `-E` names, and a sanitizer build's
    /// daemon must report where `scripts/test-sanitizers.sh` looks.
    static var socketActivateSanitizerArguments: [String] {
        let environment = ProcessInfo.processInfo.environment
        return ["ASAN_OPTIONS", "LSAN_OPTIONS", "TSAN_OPTIONS", "ASAN_SYMBOLIZER_PATH", "TSAN_SYMBOLIZER_PATH"]
            .filter { environment[$0] != nil }
            .flatMap { ["-E", $0] }
    }

    static func unitFile(_ name: String) -> URL {
        unitDirectory.appendingPathComponent(name)
    }

    /// The first executable called `name` on `PATH` (or in the sbin directories a root shell has).
    static func executable(_ name: String) -> URL? {
        let path = ProcessInfo.processInfo.environment["PATH"] ?? ""
        let directories = path.split(separator: ":").map(String.init) + ["/usr/bin", "/bin", "/usr/sbin", "/sbin"]
        return directories.lazy
            .map { URL(fileURLWithPath: $0).appendingPathComponent(name) }
            .first { FileManager.default.isExecutableFile(atPath: $0.path) }
    }

    /// Runs `executable` to its end (bounded in time) and returns how it ended and what it printed.
    static func run(_ executable: URL, _ arguments: [String], timeout: Duration = .seconds(60)) async throws -> CommandResult {
        try await CommandResult.run(
            name: executable.lastPathComponent, executable: executable, arguments: arguments,
            environment: TestProcess.environment(adding: ["SYSTEMD_COLORS": "0", "SYSTEMD_PAGER": "cat", "LC_ALL": "C.UTF-8"]),
            timeout: timeout)
    }
}
