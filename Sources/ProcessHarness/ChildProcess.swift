import Subprocess
import Synchronization

#if canImport(System)
import System
#else
import SystemPackage
#endif

#if canImport(Glibc)
import Glibc
#endif

/// One of a child process's output streams.
public enum OutputStream: String, Sendable, Hashable {
    case stdout, stderr
}

/// How a child process ended.
public enum ProcessEnd: Sendable, Equatable, CustomStringConvertible {
    case exited(Int32)
    case signalled(Int32)

    init(_ status: TerminationStatus) {
        switch status {
        case .exited(let code): self = .exited(code)
        case .signaled(let signal): self = .signalled(signal)
        }
    }

    public var description: String {
        switch self {
        case .exited(let code): "exit status \(code)"
        case .signalled(let signal): "signal \(signal)"
        }
    }
}

/// Why the harness gave up: a process that would not start, a line that never came, a wait that
/// ran out of time. The message says what was awaited and what was seen.
public struct ChildProcessError: Error, CustomStringConvertible {
    public var description: String

    public init(_ description: String) {
        self.description = description
    }
}

/// A real child process (the daemon, the simulator, PostgreSQL, nginx, a command) whose output is
/// awaited line by line: the one harness of the integration tests and the benchmarks.
///
/// swift-subprocess starts it and streams both outputs; each line is kept, so waiting for a line
/// is an event, never a sleep, and finds lines printed before the wait began. Every wait has a time
/// limit. The process is killed when this object goes away, so a failing test or an interrupted
/// benchmark cannot leak it.
public final class ChildProcess: Sendable {
    public let name: String
    public let pid: Int32
    private let monitor: Monitor

    /// Starts `executable` with exactly `environment` (the parent's is not inherited), standard
    /// input on /dev/null, and returns once it runs.
    public init(
        name: String, executable: String, arguments: [String], environment: [String: String],
        workingDirectory: String? = nil
    ) async throws {
        guard access(executable, X_OK) == 0 else {
            throw ChildProcessError("\(name): no executable at \(executable)")
        }
        let monitor = Monitor()
        // As keys and values: swift-subprocess 1.0.2 passes raw "K=V" bytes to strdup without
        // adding the NUL, so a value could run on into whatever follows it in memory.
        let variables = Dictionary(uniqueKeysWithValues: environment.map { (Environment.Key(stringLiteral: $0.key), $0.value) })
        pid = try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Int32, any Error>) in
            let started = Started(continuation)
            Task {
                do {
                    let outcome = try await run(
                        .path(FilePath(executable)), arguments: Arguments(arguments), environment: .custom(variables),
                        workingDirectory: workingDirectory.map { FilePath($0) },
                        input: .none, output: .sequence, error: .sequence
                    ) { execution in
                        started.resume(with: .success(execution.processIdentifier.value))
                        await withTaskGroup(of: Void.self) { group in
                            group.addTask { await Self.pump(execution.standardOutput, .stdout, into: monitor) }
                            group.addTask { await Self.pump(execution.standardError, .stderr, into: monitor) }
                        }
                    }
                    monitor.exited(ProcessEnd(outcome.terminationStatus))
                } catch {
                    let failure = ChildProcessError("\(name): swift-subprocess failed for \(executable): \(error)")
                    // Before the start, the caller hears it; after, the waits do (as an end).
                    if !started.resume(with: .failure(failure)) {
                        monitor.append("[harness: \(failure)]", to: .stderr)
                        monitor.exited(.exited(-1))
                    }
                }
            }
        }
        self.name = name
        self.monitor = monitor
    }

    deinit {
        if monitor.end == nil {
            kill(pid, SIGKILL)
        }
    }

    // MARK: Output

    /// Waits for a line (already printed or still to come) that contains `text`, and returns it.
    /// Fails early when the streams end without one, showing what the process printed.
    @discardableResult
    public func waitForLine(
        containing text: String,
        in streams: Set<OutputStream> = [.stdout, .stderr],
        timeout: Duration = .seconds(60)
    ) async throws -> String {
        let monitor = self.monitor
        do {
            return try await withTimeout(timeout, "\(name) to print a line containing '\(text)'") {
                try await monitor.line(in: streams) { $0.contains(text) }
            }
        } catch {
            throw ChildProcessError("\(error)\n\(diagnostics())")
        }
    }

    /// Every complete line printed so far on `stream`.
    public func lines(_ stream: OutputStream) -> [String] {
        monitor.lines(stream)
    }

    /// The last lines of both streams and the process state, for failure messages.
    public func diagnostics(lastLines count: Int = 40) -> String {
        let state = monitor.end.map { "ended with \($0)" } ?? "still running"
        let stdout = lines(.stdout).suffix(count).joined(separator: "\n")
        let stderr = lines(.stderr).suffix(count).joined(separator: "\n")
        return "--- \(name) (pid \(pid), \(state)) stdout:\n\(stdout)\n--- \(name) stderr:\n\(stderr)\n---"
    }

    // MARK: Lifetime

    /// Set once the process has ended and both streams have been read to the end.
    public var end: ProcessEnd? { monitor.end }
    public var isRunning: Bool { monitor.end == nil }

    /// Waits until the process has ended and both streams have been read to the end.
    @discardableResult
    public func waitForExit(timeout: Duration = .seconds(60)) async throws -> ProcessEnd {
        let monitor = self.monitor
        do {
            return try await withTimeout(timeout, "\(name) to exit") { try await monitor.exit() }
        } catch {
            throw ChildProcessError("\(error)\n\(diagnostics())")
        }
    }

    /// Sends `signal` unless the process has already ended.
    public func send(_ signal: Int32) {
        if monitor.end == nil {
            kill(pid, signal)
        }
    }

    /// Asks the process to stop (SIGTERM), and kills it (SIGKILL) if it has not ended within `grace`.
    @discardableResult
    public func stop(grace: Duration = .seconds(5)) async -> ProcessEnd? {
        send(SIGTERM)
        if let end = try? await waitForExit(timeout: grace) { return end }
        send(SIGKILL)
        return try? await waitForExit(timeout: .seconds(10))
    }

    /// The resident set size in bytes (`VmRSS` of /proc/PID/status), nil once it has ended.
    public func residentBytes() -> Int? {
        guard let file = fopen("/proc/\(pid)/status", "r") else { return nil }
        defer { fclose(file) }
        var line = [CChar](repeating: 0, count: 256)
        while fgets(&line, Int32(line.count), file) != nil {
            let text = String(decoding: line.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
            guard text.hasPrefix("VmRSS:") else { continue }
            return text.split(separator: " ").compactMap { Int($0) }.first.map { $0 * 1024 }
        }
        return nil
    }

    // MARK: Reading

    private static func pump(_ output: SubprocessOutputSequence, _ stream: OutputStream, into monitor: Monitor) async {
        do {
            // Unbounded: a line past a limit would end the reading, and a child writing to an
            // undrained pipe blocks.
            for try await line in output.strings(bufferingPolicy: .unbounded) {
                monitor.append(line, to: stream)
            }
        } catch {
            monitor.append("[harness: reading \(stream) failed: \(error)]", to: stream)
        }
        monitor.closed(stream)
    }
}

/// How many times longer than written the harness waits before it gives up:
/// `MDEGATE_TEST_TIME_SCALE` (a whole number, at least 1), else 1. A sanitizer build runs the
/// daemon and the simulator several times slower, so `scripts/test-sanitizers.sh` sets it; the
/// limits stay as written for everyone else. Only the bounds of waits grow: no test judges a
/// duration by them.
public enum HarnessTime {
    public static let scale: Int = {
        guard let text = getenv("MDEGATE_TEST_TIME_SCALE").map({ String(cString: $0) }), !text.isEmpty else { return 1 }
        guard let scale = Int(text), scale >= 1 else {
            fatalError("MDEGATE_TEST_TIME_SCALE must be a whole number of at least 1, not '\(text)'")
        }
        return scale
    }()

    public static func scaled(_ limit: Duration) -> Duration {
        limit * scale
    }

    /// Each integration test's time limit (`.timeLimit`), which includes waiting for its share
    /// of the machine: 5 minutes, times `scale`.
    public static var suiteMinutes: Int { 5 * scale }
}

/// Runs `operation` and fails with a `ChildProcessError` naming `what` when it takes longer than
/// `limit` (times `HarnessTime.scale`): a broken process fails the caller instead of hanging it.
/// `operation` must end when its task is cancelled (task sleeps and the harness's waits do).
public func withTimeout<T: Sendable>(
    _ limit: Duration,
    _ what: String,
    _ operation: @escaping @Sendable () async throws -> T
) async throws -> T {
    let limit = HarnessTime.scaled(limit)
    return try await withThrowingTaskGroup(of: T?.self) { group in
        group.addTask { try await operation() }
        group.addTask {
            try await Task.sleep(for: limit)
            return nil
        }
        defer { group.cancelAll() }
        guard let first = try await group.next(), let value = first else {
            throw ChildProcessError("timed out after \(limit) waiting for \(what)")
        }
        return value
    }
}

/// The start's continuation, resumed once: with the pid when the child runs, or with the error
/// when swift-subprocess fails before that. Returns whether this call resumed it.
private final class Started: Sendable {
    private let continuation: Mutex<CheckedContinuation<Int32, any Error>?>

    init(_ continuation: CheckedContinuation<Int32, any Error>) {
        self.continuation = Mutex(continuation)
    }

    @discardableResult
    func resume(with result: Result<Int32, any Error>) -> Bool {
        guard let continuation = continuation.withLock({ $0.take() }) else { return false }
        continuation.resume(with: result)
        return true
    }
}

/// The shared state between the stream readers, the process's end and waiting tasks.
private final class Monitor: Sendable {
    private struct Waiter {
        var streams: Set<OutputStream>
        var matches: @Sendable (String) -> Bool
        var continuation: CheckedContinuation<String, any Error>
    }

    private struct State {
        var lines: [(stream: OutputStream, text: String)] = []
        var open: Set<OutputStream> = [.stdout, .stderr]
        var waiters: [Int: Waiter] = [:]
        var end: ProcessEnd?
        var exitWaiters: [Int: CheckedContinuation<ProcessEnd, any Error>] = [:]
        var nextID = 0
    }

    private let state = Mutex(State())

    var end: ProcessEnd? { state.withLock { $0.end } }

    func lines(_ stream: OutputStream) -> [String] {
        state.withLock { $0.lines.filter { $0.stream == stream }.map(\.text) }
    }

    func append(_ text: String, to stream: OutputStream) {
        let ready = state.withLock { state -> [CheckedContinuation<String, any Error>] in
            state.lines.append((stream, text))
            var ready: [CheckedContinuation<String, any Error>] = []
            for (id, waiter) in state.waiters where waiter.streams.contains(stream) && waiter.matches(text) {
                state.waiters[id] = nil
                ready.append(waiter.continuation)
            }
            return ready
        }
        for continuation in ready { continuation.resume(returning: text) }
    }

    func closed(_ stream: OutputStream) {
        let ended = state.withLock { state -> [Waiter] in
            state.open.remove(stream)
            var ended: [Waiter] = []
            for (id, waiter) in state.waiters where waiter.streams.isDisjoint(with: state.open) {
                state.waiters[id] = nil
                ended.append(waiter)
            }
            return ended
        }
        for waiter in ended {
            waiter.continuation.resume(throwing: ChildProcessError("the output ended without the awaited line"))
        }
    }

    /// Called once swift-subprocess has seen the process end and both streams close.
    func exited(_ end: ProcessEnd) {
        let waiters = state.withLock { state in
            state.end = end
            defer { state.exitWaiters = [:] }
            return Array(state.exitWaiters.values)
        }
        for waiter in waiters { waiter.resume(returning: end) }
    }

    private func nextID() -> Int {
        state.withLock { state in
            state.nextID += 1
            return state.nextID
        }
    }

    /// The first line in `streams` that `matches`, printed before or after the call.
    func line(in streams: Set<OutputStream>, matching matches: @escaping @Sendable (String) -> Bool) async throws -> String {
        let id = nextID()
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { continuation in
                let outcome = state.withLock { state -> Result<String, any Error>? in
                    if Task.isCancelled { return .failure(CancellationError()) }
                    if let line = state.lines.first(where: { streams.contains($0.stream) && matches($0.text) }) {
                        return .success(line.text)
                    }
                    if streams.isDisjoint(with: state.open) {
                        return .failure(ChildProcessError("the output ended without the awaited line"))
                    }
                    state.waiters[id] = Waiter(streams: streams, matches: matches, continuation: continuation)
                    return nil
                }
                if let outcome { continuation.resume(with: outcome) }
            }
        } onCancel: {
            let waiter = state.withLock { $0.waiters.removeValue(forKey: id) }
            waiter?.continuation.resume(throwing: CancellationError())
        }
    }

    func exit() async throws -> ProcessEnd {
        let id = nextID()
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { continuation in
                let outcome = state.withLock { state -> Result<ProcessEnd, any Error>? in
                    if Task.isCancelled { return .failure(CancellationError()) }
                    if let end = state.end { return .success(end) }
                    state.exitWaiters[id] = continuation
                    return nil
                }
                if let outcome { continuation.resume(with: outcome) }
            }
        } onCancel: {
            let waiter = state.withLock { $0.exitWaiters.removeValue(forKey: id) }
            waiter?.resume(throwing: CancellationError())
        }
    }
}
