import Foundation
import MDEGateCore
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// One scenario's processes and scratch directory: whatever is started here is stopped when the
/// scenario ends, whether it succeeded, failed or ran out of time.
final class Lab: Sendable {
    let workspace: Workspace
    let environment: Environment
    private let started = Mutex<[ChildProcess]>([])

    init(workspace: Workspace, environment: Environment) {
        self.workspace = workspace
        self.environment = environment
    }

    func startSimulator(limits: [Limit], delay: Duration? = nil) throws -> RunningSimulator {
        let simulator = try RunningSimulator.start(limits: limits, delay: delay, in: workspace, environment: environment)
        started.withLock { $0.append(simulator.process) }
        return simulator
    }

    /// `directory`: a subdirectory of the workspace of its own (one per daemon when several run).
    func startDaemon(_ settings: RunningDaemon.Settings, simulator: RunningSimulator, directory: String? = nil) throws -> RunningDaemon {
        var place = workspace
        if let directory {
            place = Workspace(path: workspace.file(directory))
            try FileManager.default.createDirectory(atPath: place.path, withIntermediateDirectories: true)
        }
        let daemon = try RunningDaemon.start(settings, simulator: simulator, in: place, environment: environment)
        started.withLock { $0.append(daemon.process) }
        return daemon
    }

    func startPostgres() throws -> RunningPostgres {
        let postgres = try RunningPostgres.start(in: workspace, environment: environment)
        started.withLock { $0.append(postgres.process) }
        return postgres
    }

    func startNginx(executable: String, simulator: RunningSimulator) throws -> RunningNginx {
        let nginx = try RunningNginx.start(executable: executable, simulator: simulator, in: workspace, environment: environment)
        started.withLock { $0.append(nginx.process) }
        return nginx
    }

    /// Stops every started process, newest first (the daemon or nginx before their upstream).
    func tearDown(showLogs: Bool) {
        let processes = started.withLock { list in
            defer { list.removeAll() }
            return list
        }
        for process in processes.reversed() {
            if showLogs {
                let tail = process.logTail()
                if !tail.isEmpty { FileHandle.standardError.write(Data("\(process.name) (pid \(process.pid)) output:\n\(tail)\n".utf8)) }
            }
            process.stop(graceSeconds: 5)
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
            lab.tearDown(showLogs: false)
            return result
        } catch {
            lab.tearDown(showLogs: true)
            throw error
        }
    }
}
