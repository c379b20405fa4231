import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// A throwaway PostgreSQL server for `shared`: Debian's server binaries, `initdb` in a fresh
/// directory and `postgres` in the foreground as a child (as the `postgres` user when the bench
/// runs as root), listening only on a Unix socket in that directory.
struct RunningPostgres: Sendable {
    let process: ChildProcess
    let directory: String

    /// `shared_quota.url` for a daemon on this machine.
    var url: String { "postgresql://mdegate@/postgres?host=\(directory)" }

    static func start(in workspace: Workspace, environment: Environment) throws -> RunningPostgres {
        let root = "/usr/lib/postgresql"
        let versions = ((try? FileManager.default.contentsOfDirectory(atPath: root)) ?? []).compactMap(Int.init).sorted()
        guard let newest = versions.last else {
            throw BenchError("no PostgreSQL server under \(root): install Debian's postgresql (scripts/install-bench-deps.sh)")
        }
        let bin = "\(root)/\(newest)/bin"
        // Its own directory, outside the workspace (which only root may enter), for the server's user.
        var template = Array("/tmp/mdb-pg.XXXXXX".utf8CString)
        guard let made = template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }) else {
            throw BenchError("cannot create a directory under /tmp: \(String(cString: strerror(errno)))")
        }
        let directory = String(cString: made)
        environment.children.addDirectory(directory)
        let asRoot = getuid() == 0
        if asRoot {
            guard let account = getpwnam("postgres") else { throw BenchError("running as root, but there is no postgres user") }
            chown(directory, account.pointee.pw_uid, account.pointee.pw_gid)
        }
        func command(_ executable: String, _ arguments: [String]) -> (String, [String]) {
            asRoot ? ("/usr/sbin/runuser", ["-u", "postgres", "--", executable] + arguments) : (executable, arguments)
        }
        let (initdb, initdbArguments) = command(
            "\(bin)/initdb", ["-D", "\(directory)/data", "-A", "trust", "-U", "mdegate", "--no-sync", "-E", "UTF8", "--locale=C"])
        let setup = try ChildProcess(
            name: "initdb", executable: initdb, arguments: initdbArguments, workspace: workspace, children: environment.children)
        try setup.waitUntil(timeoutSeconds: min(120, environment.secondsLeft)) { false == setup.isRunning }
        guard setup.stop(graceSeconds: 1) == 0 else { throw BenchError("initdb failed:\n\(setup.logTail())") }
        // fsync stays on: the figure is what a slot costs on a real server (its commit included).
        let (postgres, arguments) = command(
            "\(bin)/postgres", ["-D", "\(directory)/data", "-k", directory, "-p", "5432", "-c", "listen_addresses="])
        let process = try ChildProcess(
            name: "postgres", executable: postgres, arguments: arguments, workspace: workspace, children: environment.children)
        do {
            _ = try process.waitForLine(
                containing: "ready to accept connections", in: \.stderrPath, timeoutSeconds: min(60, environment.secondsLeft))
        } catch {
            process.stop(graceSeconds: 1)
            throw error
        }
        return RunningPostgres(process: process, directory: directory)
    }
}
