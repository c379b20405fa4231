import Foundation
import MDEGateCore
import ProcessHarness
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// The processes and scratch directories this run made, so a timeout, an error or Ctrl-C can
/// end them (only these) and remove them.
final class Children: Sendable {
    private let processes = Mutex<[ChildProcess]>([])
    private let directories = Mutex<[String]>([])

    func add(_ process: ChildProcess) { processes.withLock { $0.append(process) } }
    func addDirectory(_ path: String) { directories.withLock { $0.append(path) } }

    /// Kills every child and removes the scratch directories: the last act of an interrupted run.
    func abandon() {
        signalAll(SIGKILL)
        for path in directories.withLock({ $0 }) { try? FileManager.default.removeItem(atPath: path) }
    }

    /// Sends `signal` to every child still running.
    func signalAll(_ signal: Int32) {
        for process in processes.withLock({ $0 }) { process.send(signal) }
    }
}

/// A short-pathed scratch directory under /tmp (Unix socket paths must stay under 107 bytes).
struct Workspace: Sendable {
    let path: String

    static func create() throws -> Workspace {
        var template = Array("/tmp/mdb.XXXXXX".utf8CString)
        guard let made = template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }) else {
            throw BenchError("cannot create a directory under /tmp: \(String(cString: strerror(errno)))")
        }
        return Workspace(path: String(cString: made))
    }

    func file(_ name: String) -> String { "\(path)/\(name)" }

    func remove() { try? FileManager.default.removeItem(atPath: path) }
}

extension Environment {
    /// Starts a child (simulator, daemon, PostgreSQL, nginx) in `workspace`, its output kept in
    /// memory, registered so that the watchdog and Ctrl-C end it.
    func start(_ name: String, executable: String, arguments: [String], in workspace: Workspace) async throws -> ChildProcess {
        guard FileManager.default.isExecutableFile(atPath: executable) else {
            throw BenchError(
                "\(executable) is missing: build it next to mdegate-bench (swift build --product \(URL(fileURLWithPath: executable).lastPathComponent)), or pass --bin-dir")
        }
        // MDEGATE_* variables of the caller would override the benchmark's configuration file.
        let process = try await ChildProcess(
            name: name, executable: executable, arguments: arguments,
            environment: ProcessInfo.processInfo.environment.filter { !$0.key.hasPrefix("MDEGATE_") },
            workingDirectory: workspace.path)
        children.add(process)
        return process
    }
}

extension ChildProcess {
    /// Polls `ready` every 2 ms until it returns true; throws if the child ends first or time runs out.
    func waitUntil(timeoutSeconds: Double, _ ready: () -> Bool) async throws {
        let deadline = Now.monotonic() + Int64(timeoutSeconds * 1e9)
        while Now.monotonic() < deadline {
            if ready() { return }
            if let end { throw BenchError("\(name) ended (\(end)) before it was ready:\n\(logTail())") }
            try await Task.sleep(for: .milliseconds(2))
        }
        throw BenchError("\(name) was not ready within \(timeoutSeconds) s:\n\(logTail())")
    }

    /// The last lines of its output and of `logFiles` (nginx's error_log), for error messages.
    func logTail(lines count: Int = 15, logFiles: [String] = []) -> String {
        let output = [lines(.stdout), lines(.stderr)].map { $0.suffix(count).joined(separator: "\n") }
        let files = logFiles.compactMap { try? String(contentsOfFile: $0, encoding: .utf8) }
            .map { $0.split(separator: "\n").suffix(count).joined(separator: "\n") }
        return (output + files).filter { !$0.isEmpty }
            .map { $0.split(separator: "\n").map { "    | \($0)" }.joined(separator: "\n") }
            .joined(separator: "\n")
    }

    /// SIGTERM, then SIGKILL after `graceSeconds`. Returns the exit status, nil if it had to be killed.
    @discardableResult
    func stop(graceSeconds: Double) async -> Int32? {
        guard case .exited(let status) = await stop(grace: .milliseconds(Int(graceSeconds * 1000))) else { return nil }
        return status
    }
}

/// The two clocks the benchmark reads: the wall clock (the one the daemon's ledger and the
/// simulator's `arrivalTimesNs` use) and a monotonic one for durations.
enum Now {
    static func wall() -> Int64 { read(CLOCK_REALTIME) }
    static func monotonic() -> Int64 { read(CLOCK_MONOTONIC) }

    private static func read(_ clock: clockid_t) -> Int64 {
        var spec = timespec()
        clock_gettime(clock, &spec)
        return Int64(spec.tv_sec) * 1_000_000_000 + Int64(spec.tv_nsec)
    }
}

/// What a scenario needs to start the simulator and the daemon.
struct Environment: Sendable {
    var binDirectory: String
    var logLevel: String
    /// When the watchdog kills everything (the global `--timeout`).
    var deadlineMonotonic: Int64
    /// When request loops stop by themselves, so that a partial result can still be reported.
    var softDeadlineMonotonic: Int64
    let children: Children

    var secondsLeft: Double { max(0.001, Double(deadlineMonotonic - Now.monotonic()) / 1e9) }
}

/// A running simulator.
struct RunningSimulator: Sendable {
    let process: ChildProcess
    let port: UInt16
    static let token = "bench-token"
    /// The app registration the token endpoint accepts (OAuth2 scenarios).
    static let tenant = "bench-tenant"
    static let clientID = "bench-client"
    static let clientSecret = "bench-secret"

    /// `delay` holds every answer that long (`--delay`), like a distant upstream.
    static func start(limits: [Limit], delay: Duration?, in workspace: Workspace, environment: Environment) async throws -> RunningSimulator {
        var arguments = [
            "--port", "0", "--token", token, "--quiet",
            "--tenant", tenant, "--client-id", clientID, "--client-secret", clientSecret,
        ]
        for limit in limits { arguments += ["--limit", limit.spec] }
        if let delay, delay > .zero { arguments += ["--delay", delay.configString] }
        let process = try await environment.start(
            "mde-simulator", executable: "\(environment.binDirectory)/mde-simulator", arguments: arguments, in: workspace)
        do {
            let line = try await process.waitForLine(
                containing: "listening on http://", in: [.stdout], timeout: .seconds(min(30, environment.secondsLeft)))
            guard let port = line.split(separator: ":").last.flatMap({ UInt16($0.trimmingCharacters(in: .whitespaces)) })
            else { throw BenchError("cannot read the simulator's port from '\(line)'") }
            return RunningSimulator(process: process, port: port)
        } catch {
            await process.stop(graceSeconds: 1)
            throw error
        }
    }

    var endpoint: Endpoint { .loopback(port: port) }

    /// `GET /_sim/stats`.
    func stats(timeoutSeconds: Double) throws -> SimulatorStats {
        let reply = try HTTPConnection(endpoint, timeoutSeconds: timeoutSeconds).send("GET", "/_sim/stats")
        guard reply.status == 200 else { throw BenchError("GET /_sim/stats answered \(reply.status)") }
        return try JSONDecoder().decode(SimulatorStats.self, from: Data(reply.body))
    }

    /// `POST` a control route (`/_sim/faults`, `/_sim/revoke-tokens`) with a JSON body.
    func control(_ path: String, _ json: String = "{}", timeoutSeconds: Double) throws {
        let reply = try HTTPConnection(endpoint, timeoutSeconds: timeoutSeconds)
            .send("POST", path, headers: [.contentType: "application/json"], body: Array(json.utf8))
        guard reply.status == 200 else { throw BenchError("POST \(path) answered \(reply.status)") }
    }

    /// `POST /_sim/reset`: zero the counters and forget arrivals.
    func reset(timeoutSeconds: Double) throws {
        let reply = try HTTPConnection(endpoint, timeoutSeconds: timeoutSeconds).send("POST", "/_sim/reset")
        guard reply.status == 200 else { throw BenchError("POST /_sim/reset answered \(reply.status)") }
    }
}

/// The part of `GET /_sim/stats` the benchmark reads.
struct SimulatorStats: Decodable, Sendable {
    var arrivals: Int
    var violations: Int
    var answered: [String: Int]
    var maxInFlight: Int
    /// Added for the benchmark; nil with an older simulator.
    var arrivalTimesNs: [Int64]?
    var tokenRequests: Int?
    /// Per upstream API; nil with a simulator that knows only cancel.
    var byApi: [String: APIStats]?

    struct APIStats: Decodable, Sendable {
        var arrivals: Int
        var violations: Int
        var arrivalTimesNs: [Int64]?
    }
}

/// A running daemon with its own configuration file, socket and state file.
struct RunningDaemon: Sendable {
    let process: ChildProcess
    let socketPath: String
    let statePath: String
    /// From process start to the "mdegate is ready" log line.
    let startupSeconds: Double

    struct Settings: Sendable {
        var limits: [Limit]
        var guardBand: Duration
        var maxConcurrency = 8
        var maxPending = 100_000
        /// OAuth2 with the simulator's client secret instead of a token file.
        var clientSecret = false
        /// `shared_quota.url` and `host_name`: this daemon shares the quota with others.
        var sharedQuota: (url: String, hostName: String)?
    }

    /// Writes the configuration (first start only) and starts `mdegate serve`.
    static func start(
        _ settings: Settings, simulator: RunningSimulator, in workspace: Workspace, environment: Environment
    ) async throws -> RunningDaemon {
        let configPath = workspace.file("mdegate.yaml")
        let socketPath = workspace.file("gw.sock")
        let statePath = workspace.file("state.sqlite")
        if !FileManager.default.fileExists(atPath: configPath) {
            let tokenPath = workspace.file("token")
            try RunningSimulator.token.write(toFile: tokenPath, atomically: true, encoding: .utf8)
            let limits = settings.limits.map { "\"\($0.spec)\"" }.joined(separator: ", ")
            let secretPath = workspace.file("client-secret")
            try RunningSimulator.clientSecret.write(toFile: secretPath, atomically: true, encoding: .utf8)
            let oauth = """
                  tenant_id: \(RunningSimulator.tenant)
                  client_id: \(RunningSimulator.clientID)
                  client_secret_file: \(secretPath)
                  token_url: http://127.0.0.1:\(simulator.port)/{tenant_id}/oauth2/v2.0/token
                  scope: http://127.0.0.1:\(simulator.port)/.default
                """
            let yaml = """
                # Written by mdegate-bench for one run.
                socket:
                  path: \(socketPath)
                  mode: "0600"
                state:
                  path: \(statePath)
                upstream:
                  base_url: http://127.0.0.1:\(simulator.port)
                  max_concurrency: \(settings.maxConcurrency)
                auth:
                \(settings.clientSecret ? oauth : "  token_file: \(tokenPath)")
                quota:
                  limits: [\(limits)]
                  guard: \(settings.guardBand.configString)
                queue:
                  max_pending: \(settings.maxPending)
                log:
                  level: \(environment.logLevel)
                \(settings.sharedQuota.map { "shared_quota:\n  url: \"\($0.url)\"\n  host_name: \"\($0.hostName)\"" } ?? "")

                """
            try yaml.write(toFile: configPath, atomically: true, encoding: .utf8)
        }
        let started = Now.monotonic()
        let process = try await environment.start(
            "mdegate", executable: "\(environment.binDirectory)/mdegate", arguments: ["serve", "--config", configPath], in: workspace)
        do {
            _ = try await process.waitForLine(
                containing: "mdegate is ready", in: [.stderr], timeout: .seconds(min(60, environment.secondsLeft)))
        } catch {
            await process.stop(graceSeconds: 1)
            throw error
        }
        return RunningDaemon(
            process: process, socketPath: socketPath, statePath: statePath,
            startupSeconds: Double(Now.monotonic() - started) / 1e9)
    }

    var endpoint: Endpoint { .unix(socketPath) }

    /// `GET /v1/status`, parsed loosely.
    func status(timeoutSeconds: Double) throws -> [String: Any] {
        let reply = try HTTPConnection(endpoint, timeoutSeconds: timeoutSeconds).send("GET", "/v1/status")
        guard reply.status == 200, let object = try JSONSerialization.jsonObject(with: Data(reply.body)) as? [String: Any]
        else { throw BenchError("GET /v1/status answered \(reply.status)") }
        return object
    }
}
