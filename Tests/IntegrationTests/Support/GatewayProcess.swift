import Foundation
import MDEGateTransport
import Synchronization

/// The settings a test gives its gateway; defaults are small and fast.
struct GatewayOptions: Sendable {
    var limits = ["5/1s", "12/4s"]
    /// `quota.apis`: limits of single APIs, by name.
    var apiLimits: [String: [String]] = [:]
    var guardBand = "30ms"
    /// The guard of tests judged by a strict simulator. An arrival can lag its departure by more
    /// than 30 ms when the machine is busy (in a full run the in-process property tests take both
    /// cores for their first 20 s, whatever `alone` says), and a lag beyond the guard can put one
    /// arrival too many into a window: that would be the machine's doing, not the gateway's. The
    /// benchmarks measure with 30 ms. A sanitizer build lags more (the sanitized simulator
    /// accepts and reads slower): the guard grows with `HarnessTime.scale`.
    static let strictUpstreamGuard = "\(100 * HarnessTime.scale)ms"
    var maxAttempts = 4
    var initialBackoff = "50ms"
    var maxBackoff = "200ms"
    var maxPending = 1000
    /// libcurl's limits, longer on a slower build (`HarnessTime.scale`): an upstream answer that
    /// is late because the simulator runs under a sanitizer must not turn into a timeout, a retry
    /// and a second arrival.
    var connectTimeout = "\(2 * HarnessTime.scale)s"
    var requestTimeout = "\(5 * HarnessTime.scale)s"
    var maxConcurrency = 8
    var logLevel = "debug"
    /// `log.format`.
    var logFormat = "text"
    /// Start the daemon as systemd would connect it to the journal: `JOURNAL_STREAM` names its
    /// stderr (device and inode, read by the shell that then becomes the daemon).
    var journalStream = false
    /// Extra environment for the daemon.
    var environment: [String: String] = [:]
    var credential = Credential.tokenFile
    /// `upstream.ca_file`, `upstream.proxy`.
    var caFile: String?
    var proxy: String?
    /// What `auth.token_file` holds; the simulator's fixed token unless set.
    var tokenFileContent: String?
    /// `shared_quota.*` keys and their values (written quoted), e.g. `url`, `host_name`.
    var sharedQuota: [String: String] = [:]
    /// `metrics.address`, e.g. `127.0.0.1:9469`.
    var metricsAddress: String?
    /// `state.retention`.
    var retention: String?

    /// How the gateway gets its token from the simulator.
    enum Credential: Sendable {
        /// `auth.token_file` holding the simulator's fixed token.
        case tokenFile
        /// OAuth2 with the simulator's client secret in `auth.client_secret_file`.
        case clientSecret
        /// OAuth2 with a certificate the simulator has registered (`--client-certificate`).
        case clientCertificate(certificate: String, key: String)
    }

    private func authYAML(directory: TemporaryDirectory, upstream baseURL: String) -> String {
        let oauth = """
              tenant_id: \(SimulatorProcess.tenant)
              client_id: \(SimulatorProcess.clientId)
              token_url: "\(baseURL)/{tenant_id}/oauth2/v2.0/token"
              scope: "\(baseURL)/.default"
            """
        switch credential {
        case .tokenFile:
            return "  token_file: \(directory.file("token"))"
        case .clientSecret:
            return oauth + "\n  client_secret_file: \(directory.file("client-secret"))"
        case .clientCertificate(let certificate, let key):
            return oauth + "\n  client_certificate_file: \(certificate)\n  client_key_file: \(key)"
        }
    }

    private var apiLimitsYAML: String {
        guard !apiLimits.isEmpty else { return "" }
        return "  apis:\n" + apiLimits.sorted { $0.key < $1.key }.map { name, specs in
            "    \(name): [\(specs.map { "\"\($0)\"" }.joined(separator: ", "))]"
        }.joined(separator: "\n")
    }

    /// The configuration file for a gateway in `directory` in front of the upstream at `baseURL`.
    func yaml(directory: TemporaryDirectory, upstream baseURL: String) -> String {
        """
        socket:
          path: \(directory.file("gw.sock"))
          mode: "0660"
        state:
          path: \(directory.file("state.sqlite"))
        \(retention.map { "  retention: \($0)" } ?? "")
        upstream:
          base_url: "\(baseURL)"
          connect_timeout: \(connectTimeout)
          request_timeout: \(requestTimeout)
          max_concurrency: \(maxConcurrency)
        \(caFile.map { "  ca_file: \($0)" } ?? "")
        \(proxy.map { "  proxy: \"\($0)\"" } ?? "")
        auth:
        \(authYAML(directory: directory, upstream: baseURL))
        quota:
          limits: [\(limits.map { "\"\($0)\"" }.joined(separator: ", "))]
          guard: \(guardBand)
        \(apiLimitsYAML)
        retry:
          max_attempts: \(maxAttempts)
          initial_backoff: \(initialBackoff)
          max_backoff: \(maxBackoff)
        queue:
          max_pending: \(maxPending)
        log:
          level: \(logLevel)
          format: \(logFormat)
        \(metricsAddress.map { "metrics:\n  address: \"\($0)\"" } ?? "")
        \(sharedQuotaYAML)
        """
    }

    private var sharedQuotaYAML: String {
        guard !sharedQuota.isEmpty else { return "" }
        return "shared_quota:\n" + sharedQuota.sorted { $0.key < $1.key }.map { "  \($0.key): \"\($0.value)\"" }
            .joined(separator: "\n") + "\n"
    }
}

/// A running `mdegate serve`, with a client for its Unix socket and a way to run its CLI.
final class GatewayProcess: Sendable {
    let process: TestProcess
    let directory: TemporaryDirectory
    let configPath: String
    let socketPath: String
    let client: GatewayClient
    private let stopRequested = Atomic<Bool>(false)

    /// Writes the configuration and the upstream's token into `directory`, starts the daemon and
    /// waits until it says it is ready.
    init(directory: TemporaryDirectory, options: GatewayOptions, upstream: SimulatorProcess) async throws {
        self.directory = directory
        configPath = directory.file("config.yaml")
        socketPath = directory.file("gw.sock")
        try directory.write(options.tokenFileContent ?? upstream.token, to: "token")
        try directory.write(upstream.clientSecret + "\n", to: "client-secret")
        try directory.write(options.yaml(directory: directory, upstream: upstream.baseURL), to: "config.yaml")
        let serve = ["serve", "--config", configPath]
        let process =
            options.journalStream
            ? try await TestProcess(
                name: "mdegate serve",
                executable: URL(fileURLWithPath: "/bin/sh"),
                arguments: ["-c", "export JOURNAL_STREAM=$(stat -L -c %d:%i /proc/self/fd/2); exec \"$0\" \"$@\"", Binaries.gateway.path] + serve,
                environment: TestProcess.environment(adding: options.environment))
            : try await TestProcess(
                name: "mdegate serve", executable: Binaries.gateway, arguments: serve,
                environment: TestProcess.environment(adding: options.environment))
        do {
            try await process.waitForLine(containing: "mdegate is ready")
            client = try GatewayClient(socketPath: socketPath)
        } catch {
            await process.stop()
            throw error
        }
        self.process = process
    }

    /// Runs the `mdegate` command line with `MDEGATE_SOCKET` pointing at this gateway.
    func cli(_ arguments: [String], environment: [String: String] = [:]) async throws -> CommandResult {
        try await CommandResult.run(arguments, environment: ["MDEGATE_SOCKET": socketPath].merging(environment) { _, new in new })
    }

    /// Sends SIGTERM as a test step: the daemon ending afterwards is expected, not a crash.
    func requestStop() {
        stopRequested.store(true, ordering: .sequentiallyConsistent)
        process.send(SIGTERM)
    }

    /// Kills the daemon with SIGKILL as a test step (a crash, a power cut) and waits until it is gone.
    func crash() async throws {
        stopRequested.store(true, ordering: .sequentiallyConsistent)
        client.shutdown()
        process.send(SIGKILL)
        try await process.waitForExit(timeout: .seconds(20))
    }

    /// The way the daemon ended, unless a test asked it to stop.
    var unexpectedEnd: ProcessEnd? {
        stopRequested.load(ordering: .sequentiallyConsistent) ? nil : process.end
    }

    @discardableResult
    func stop() async -> ProcessEnd? {
        client.shutdown()
        return await process.stop()
    }
}

/// What a finished `mdegate` command printed and how it exited.
struct CommandResult: Sendable, CustomStringConvertible {
    var end: ProcessEnd
    var stdout: String
    var stderr: String

    /// The exit status, or -1 when a signal ended the command.
    var exitCode: Int32 {
        if case .exited(let code) = end { return code }
        return -1
    }

    var description: String {
        "mdegate ended with \(end)\nstdout: \(stdout.prefix(2000))\nstderr: \(stderr.prefix(2000))"
    }

    /// Runs `mdegate arguments` to the end (bounded in time) with a clean environment plus `environment`.
    static func run(_ arguments: [String], environment: [String: String] = [:]) async throws -> CommandResult {
        try await run(
            name: "mdegate \(arguments.first ?? "")", executable: Binaries.gateway, arguments: arguments,
            environment: TestProcess.environment(adding: environment))
    }

    /// Runs any command to its end, bounded by `timeout`, with exactly `environment` and standard
    /// input empty; kills it when the time is up.
    static func run(
        name: String, executable: URL, arguments: [String], environment: [String: String],
        workingDirectory: String? = nil, timeout: Duration = .seconds(60)
    ) async throws -> CommandResult {
        let process = try await TestProcess(
            name: name, executable: executable, arguments: arguments, environment: environment,
            workingDirectory: workingDirectory)
        do {
            let end = try await process.waitForExit(timeout: timeout)
            return CommandResult(
                end: end,
                stdout: process.lines(.stdout).joined(separator: "\n"),
                stderr: process.lines(.stderr).joined(separator: "\n"))
        } catch {
            await process.stop()
            throw error
        }
    }
}
