import Foundation
import Synchronization

/// One of a child process's output streams.
enum OutputStream: String, Sendable, Hashable {
    case stdout, stderr
}

/// How a child process ended.
enum ProcessEnd: Sendable, Equatable, CustomStringConvertible {
    case exited(Int32)
    case signalled(Int32)

    var description: String {
        switch self {
        case .exited(let code): "exit status \(code)"
        case .signalled(let signal): "signal \(signal)"
        }
    }
}

/// A real child process whose output the test awaits line by line.
///
/// Each output stream is read on a thread of its own (blocking reads must stay off Swift's
/// cooperative pool, which has as many threads as the machine has cores), so waiting for a line
/// is an event, never a sleep. Every wait has a time limit. The process is killed when this object
/// goes away, so a failing test cannot leak it.
final class TestProcess: Sendable {
    let name: String
    let pid: Int32
    private let monitor: Monitor

    /// Starts `executable` with exactly `environment` (the parent's environment is not inherited).
    init(name: String, executable: URL, arguments: [String], environment: [String: String]) throws {
        guard FileManager.default.isExecutableFile(atPath: executable.path) else {
            throw HarnessError("\(name): no executable at \(executable.path); build it first (swift build --build-tests) or set MDEGATE_BIN_DIR")
        }
        let monitor = Monitor()
        let process = Process()
        process.executableURL = executable
        process.arguments = arguments
        process.environment = environment
        let stdout = Pipe()
        let stderr = Pipe()
        process.standardInput = FileHandle.nullDevice
        process.standardOutput = stdout
        process.standardError = stderr
        process.terminationHandler = { process in
            let end: ProcessEnd = process.terminationReason == .uncaughtSignal
                ? .signalled(process.terminationStatus) : .exited(process.terminationStatus)
            monitor.exited(end)
        }
        try process.run()
        self.name = name
        self.pid = process.processIdentifier
        self.monitor = monitor
        monitor.keep(process)
        for (pipe, stream) in [(stdout, OutputStream.stdout), (stderr, .stderr)] {
            // The reader thread owns a duplicate, so no FileHandle can close the descriptor under it.
            let descriptor = dup(pipe.fileHandleForReading.fileDescriptor)
            try? pipe.fileHandleForReading.close()
            try? pipe.fileHandleForWriting.close()
            Thread.detachNewThread { Self.pump(descriptor, stream, into: monitor) }
        }
    }

    deinit {
        if monitor.end == nil {
            kill(pid, SIGKILL)
        }
    }

    /// The environment children get: this process's, minus every `MDEGATE_` override that would
    /// change the daemon's configuration behind the test's back, plus `extra`.
    static func environment(adding extra: [String: String] = [:]) -> [String: String] {
        ProcessInfo.processInfo.environment
            .filter { !$0.key.hasPrefix("MDEGATE_") }
            .merging(extra) { _, new in new }
    }

    // MARK: Output

    /// Waits for a line (already printed or still to come) that contains `text`, and returns it.
    /// Fails early when the streams end without one, showing what the process printed.
    @discardableResult
    func waitForLine(
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
            throw HarnessError("\(error)\n\(diagnostics())")
        }
    }

    /// Every complete line printed so far on `stream`.
    func lines(_ stream: OutputStream) -> [String] {
        monitor.lines(stream)
    }

    /// The last lines of both streams and the process state, for failure messages.
    func diagnostics(lastLines count: Int = 40) -> String {
        let state = monitor.end.map { "ended with \($0)" } ?? "still running"
        let stdout = lines(.stdout).suffix(count).joined(separator: "\n")
        let stderr = lines(.stderr).suffix(count).joined(separator: "\n")
        return "--- \(name) (pid \(pid), \(state)) stdout:\n\(stdout)\n--- \(name) stderr:\n\(stderr)\n---"
    }

    // MARK: Lifetime

    var end: ProcessEnd? { monitor.end }
    var isRunning: Bool { monitor.end == nil }

    /// Waits until the process has ended and both streams have been read to the end.
    @discardableResult
    func waitForExit(timeout: Duration = .seconds(60)) async throws -> ProcessEnd {
        let monitor = self.monitor
        do {
            return try await withTimeout(timeout, "\(name) to exit") {
                let end = try await monitor.exit()
                _ = try await monitor.line(in: [.stdout, .stderr], endIsSuccess: true) { _ in false }
                return end
            }
        } catch {
            throw HarnessError("\(error)\n\(diagnostics())")
        }
    }

    /// Sends `signal` unless the process has already ended.
    func send(_ signal: Int32) {
        if monitor.end == nil {
            kill(pid, signal)
        }
    }

    /// Asks the process to stop (SIGTERM), and kills it (SIGKILL) if it has not ended within `grace`.
    @discardableResult
    func stop(grace: Duration = .seconds(5)) async -> ProcessEnd? {
        send(SIGTERM)
        if let end = try? await waitForExit(timeout: grace) { return end }
        send(SIGKILL)
        return try? await waitForExit(timeout: .seconds(10))
    }

    // MARK: Reading

    private static func pump(_ descriptor: Int32, _ stream: OutputStream, into monitor: Monitor) {
        var buffer = [UInt8](repeating: 0, count: 64 * 1024)
        var pending: [UInt8] = []
        while true {
            let count = buffer.withUnsafeMutableBytes { read(descriptor, $0.baseAddress, $0.count) }
            if count < 0, errno == EINTR { continue }
            guard count > 0 else { break }
            pending.append(contentsOf: buffer[0..<count])
            while let newline = pending.firstIndex(of: UInt8(ascii: "\n")) {
                monitor.append(String(decoding: pending[..<newline], as: UTF8.self), to: stream)
                pending.removeSubrange(...newline)
            }
        }
        if !pending.isEmpty {
            monitor.append(String(decoding: pending, as: UTF8.self), to: stream)
        }
        close(descriptor)
        monitor.closed(stream)
    }
}

/// The shared state between reader threads, the termination handler and waiting tasks.
private final class Monitor: Sendable {
    private struct Waiter {
        var streams: Set<OutputStream>
        var endIsSuccess: Bool
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
        /// Kept alive until it has ended: Foundation reaps it and calls the termination handler.
        var process: Process?
    }

    private let state = Mutex(State())

    var end: ProcessEnd? { state.withLock { $0.end } }

    func keep(_ process: sending Process) {
        state.withLock { state in
            if state.end == nil { state.process = process }
        }
    }

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
            if waiter.endIsSuccess {
                waiter.continuation.resume(returning: "")
            } else {
                waiter.continuation.resume(throwing: HarnessError("the output ended without the awaited line"))
            }
        }
    }

    func exited(_ end: ProcessEnd) {
        let waiters = state.withLock { state in
            state.end = end
            state.process = nil
            let waiters = state.exitWaiters.values
            state.exitWaiters = [:]
            return Array(waiters)
        }
        for waiter in waiters { waiter.resume(returning: end) }
    }

    /// The first line in `streams` that `matches`, printed before or after the call.
    func line(
        in streams: Set<OutputStream>,
        endIsSuccess: Bool = false,
        matching matches: @escaping @Sendable (String) -> Bool
    ) async throws -> String {
        let id = state.withLock { state in
            state.nextID += 1
            return state.nextID
        }
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { continuation in
                let outcome = state.withLock { state -> Result<String, any Error>? in
                    if Task.isCancelled { return .failure(CancellationError()) }
                    if let line = state.lines.first(where: { streams.contains($0.stream) && matches($0.text) }) {
                        return .success(line.text)
                    }
                    if streams.isDisjoint(with: state.open) {
                        return endIsSuccess ? .success("") : .failure(HarnessError("the output ended without the awaited line"))
                    }
                    state.waiters[id] = Waiter(streams: streams, endIsSuccess: endIsSuccess, matches: matches, continuation: continuation)
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
        let id = state.withLock { state in
            state.nextID += 1
            return state.nextID
        }
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
