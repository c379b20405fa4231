import Foundation
import MDEGateCore
import ProcessHarness
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// One scenario's processes and scratch directory: whatever is started here is stopped when the
/// scenario ends, whether it succeeded, failed or ran out of time.
final class Lab: Sendable {
    let workspace: Workspace
    let environment: Environment
    /// With the log files each writes besides its output (nginx's error_log).
    private let started = Mutex<[(process: ChildProcess, logFiles: [String])]>([])

    init(workspace: Workspace, environment: Environment) {
        self.workspace = workspace
        self.environment = environment
    }

    func startSimulator(limits: [Limit], delay: Duration? = nil) async throws -> RunningSimulator {
        let simulator = try await RunningSimulator.start(limits: limits, delay: delay, in: workspace, environment: environment)
        started.withLock { $0.append((simulator.process, [])) }
        return simulator
    }

    /// `directory`: a subdirectory of the workspace of its own (one per daemon when several run).
    func startDaemon(_ settings: RunningDaemon.Settings, simulator: RunningSimulator, directory: String? = nil) async throws -> RunningDaemon {
        var place = workspace
        if let directory {
            place = Workspace(path: workspace.file(directory))
            try FileManager.default.createDirectory(atPath: place.path, withIntermediateDirectories: true)
        }
        let daemon = try await RunningDaemon.start(settings, simulator: simulator, in: place, environment: environment)
        started.withLock { $0.append((daemon.process, [])) }
        return daemon
    }

    func startPostgres() async throws -> RunningPostgres {
        let postgres = try await RunningPostgres.start(in: workspace, environment: environment)
        started.withLock { $0.append((postgres.process, [])) }
        return postgres
    }

    func startNginx(executable: String, simulator: RunningSimulator) async throws -> RunningNginx {
        let nginx = try await RunningNginx.start(executable: executable, simulator: simulator, in: workspace, environment: environment)
        started.withLock { $0.append((nginx.process, [nginx.errorLog])) }
        return nginx
    }

    /// Stops every started process, newest first (the daemon or nginx before their upstream).
    func tearDown(showLogs: Bool) async {
        let processes = started.withLock { list in
            defer { list.removeAll() }
            return list
        }
        for (process, logFiles) in processes.reversed() {
            if showLogs {
                let tail = process.logTail(logFiles: logFiles)
                if !tail.isEmpty { FileHandle.standardError.write(Data("\(process.name) (pid \(process.pid)) output:\n\(tail)\n".utf8)) }
            }
            await process.stop(graceSeconds: 5)
        }
    }

    /// Runs `body` in a fresh lab and always tears it down.
    static func with<Result: Sendable>(
        _ environment: Environment, keepWorkspace: Bool, _ body: (Lab) async throws -> Result
    ) async throws -> Result {
        let lab = Lab(workspace: try Workspace.create(), environment: environment)
        if !keepWorkspace { environment.children.addDirectory(lab.workspace.path) }
        defer {
            if keepWorkspace {
                FileHandle.standardError.write(Data("mdegate-bench: kept \(lab.workspace.path)\n".utf8))
            } else {
                lab.workspace.remove()
            }
        }
        do {
            let result = try await body(lab)
            await lab.tearDown(showLogs: false)
            return result
        } catch {
            await lab.tearDown(showLogs: true)
            throw error
        }
    }
}
