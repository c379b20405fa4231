import Foundation
import MDEGateCore
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// The processes and scratch directories this run made, so a timeout, an error or Ctrl-C can
/// end them (by pid, and only these) and remove them.
final class Children: Sendable {
    private let pids = Mutex<Set<pid_t>>([])
    private let directories = Mutex<[String]>([])

    func addDirectory(_ path: String) { directories.withLock { $0.append(path) } }

    /// Kills every child and removes the scratch directories: the last act of an interrupted run.
    func abandon() {
        signalAll(SIGKILL)
        for path in directories.withLock({ $0 }) { try? FileManager.default.removeItem(atPath: path) }
    }

    func add(_ pid: pid_t) { _ = pids.withLock { $0.insert(pid) } }
    func remove(_ pid: pid_t) { _ = pids.withLock { $0.remove(pid) } }

    /// Sends `signal` to every child still registered.
    func signalAll(_ signal: Int32) {
        for pid in pids.withLock({ $0 }) { kill(pid, signal) }
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

/// A started child (simulator, daemon or nginx) whose stdout and stderr go to files in the workspace.
final class ChildProcess: Sendable {
    let name: String
    let pid: pid_t
    let stdoutPath: String
    let stderrPath: String
    /// Other logs the child writes itself (nginx's error_log), shown with its output.
    let logFiles: [String]
    private let process: Process
    private let children: Children

    init(
        name: String, executable: String, arguments: [String], workspace: Workspace, children: Children,
        logFiles: [String] = []
    ) throws {
        guard FileManager.default.isExecutableFile(atPath: executable) else {
            throw BenchError(
                "\(executable) is missing: build it next to mdegate-bench (swift build --product \(URL(fileURLWithPath: executable).lastPathComponent)), or pass --bin-dir")
        }
        self.name = name
        self.children = children
        self.logFiles = logFiles
        stdoutPath = workspace.file("\(name).out")
        stderrPath = workspace.file("\(name).err")
        _ = FileManager.default.createFile(atPath: stdoutPath, contents: nil)
        _ = FileManager.default.createFile(atPath: stderrPath, contents: nil)
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        // MDEGATE_* variables of the caller would override the benchmark's configuration file.
        process.environment = ProcessInfo.processInfo.environment.filter { !$0.key.hasPrefix("MDEGATE_") }
        process.currentDirectoryURL = URL(fileURLWithPath: workspace.path)
        process.standardInput = FileHandle.nullDevice
        process.standardOutput = FileHandle(forWritingAtPath: stdoutPath)
        process.standardError = FileHandle(forWritingAtPath: stderrPath)
        try process.run()
        self.process = process
        pid = process.processIdentifier
        children.add(pid)
    }

    var isRunning: Bool { process.isRunning }

    /// Waits until `needle` appears in the child's stdout or stderr; returns the matching line.
    func waitForLine(containing needle: String, in stream: KeyPath<ChildProcess, String>, timeoutSeconds: Double) throws -> String {
        var found: String?
        try waitUntil(timeoutSeconds: timeoutSeconds) {
            if let text = try? String(contentsOfFile: self[keyPath: stream], encoding: .utf8),
                let line = text.split(separator: "\n").first(where: { $0.contains(needle) })
            {
                found = String(line)
            }
            return found != nil
        }
        return found!
    }

    /// Polls `ready` every 2 ms until it returns true; throws if the child exits first or time runs out.
    func waitUntil(timeoutSeconds: Double, _ ready: () -> Bool) throws {
        let deadline = Now.monotonic() + Int64(timeoutSeconds * 1e9)
        while Now.monotonic() < deadline {
            if ready() { return }
            guard isRunning else {
                throw BenchError("\(name) exited (status \(process.terminationStatus)) before it was ready:\n\(logTail())")
            }
            usleep(2_000)
        }
        throw BenchError("\(name) was not ready within \(timeoutSeconds) s:\n\(logTail())")
    }

    /// The last lines of its output files and logs, for error messages.
    func logTail(lines: Int = 15) -> String {
        ([stdoutPath, stderrPath] + logFiles).compactMap { path in
            guard let text = try? String(contentsOfFile: path, encoding: .utf8), !text.isEmpty else { return nil }
            return text.split(separator: "\n").suffix(lines).map { "    | \($0)" }.joined(separator: "\n")
        }.joined(separator: "\n")
    }

    /// The resident set size in bytes (`VmRSS` of /proc/PID/status).
    func residentBytes() -> Int? {
        guard let text = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8),
            let line = text.split(separator: "\n").first(where: { $0.hasPrefix("VmRSS:") })
        else { return nil }
        let digits = line.split(separator: " ").compactMap { Int($0) }.first
        return digits.map { $0 * 1024 }
    }

    /// SIGTERM, then SIGKILL after `graceSeconds`. Returns the exit status, nil if it had to be killed.
    @discardableResult
    func stop(graceSeconds: Double = 5) -> Int32? {
        defer { children.remove(pid) }
        if isRunning { kill(pid, SIGTERM) }
        let deadline = Now.monotonic() + Int64(graceSeconds * 1e9)
        while isRunning, Now.monotonic() < deadline { usleep(5_000) }
        if isRunning {
            kill(pid, SIGKILL)
            process.waitUntilExit()
            return nil
        }
        process.waitUntilExit()
        return process.terminationStatus
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
    static func start(limits: [Limit], delay: Duration?, in workspace: Workspace, environment: Environment) throws -> RunningSimulator {
        var arguments = [
            "--port", "0", "--token", token, "--quiet",
            "--tenant", tenant, "--client-id", clientID, "--client-secret", clientSecret,
        ]
        for limit in limits { arguments += ["--limit", limit.spec] }
        if let delay, delay > .zero { arguments += ["--delay", delay.configString] }
        let process = try ChildProcess(
            name: "mde-simulator", executable: "\(environment.binDirectory)/mde-simulator", arguments: arguments,
            workspace: workspace, children: environment.children)
        do {
            let line = try process.waitForLine(
                containing: "listening on http://", in: \.stdoutPath, timeoutSeconds: min(30, environment.secondsLeft))
            guard let port = line.split(separator: ":").last.flatMap({ UInt16($0.trimmingCharacters(in: .whitespaces)) })
            else { throw BenchError("cannot read the simulator's port from '\(line)'") }
            return RunningSimulator(process: process, port: port)
        } catch {
            process.stop(graceSeconds: 1)
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
    /// From process start to the "mdegate is ready" log line (polled every 2 ms).
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
    ) throws -> RunningDaemon {
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
        let process = try ChildProcess(
            name: "mdegate", executable: "\(environment.binDirectory)/mdegate",
            arguments: ["serve", "--config", configPath], workspace: workspace, children: environment.children)
        do {
            _ = try process.waitForLine(
                containing: "mdegate is ready", in: \.stderrPath, timeoutSeconds: min(60, environment.secondsLeft))
        } catch {
            process.stop(graceSeconds: 1)
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
