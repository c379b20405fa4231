import Foundation
import ProcessHarness

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

    static func start(in workspace: Workspace, environment: Environment) async throws -> RunningPostgres {
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
        let setup = try await environment.start("initdb", executable: initdb, arguments: initdbArguments, in: workspace)
        guard try await setup.waitForExit(timeout: .seconds(min(120, environment.secondsLeft))) == .exited(0) else {
            throw BenchError("initdb failed:\n\(setup.logTail())")
        }
        // fsync stays on: the figure is what a slot costs on a real server (its commit included).
        let (postgres, arguments) = command(
            "\(bin)/postgres", ["-D", "\(directory)/data", "-k", directory, "-p", "5432", "-c", "listen_addresses="])
        let process = try await environment.start("postgres", executable: postgres, arguments: arguments, in: workspace)
        do {
            _ = try await process.waitForLine(
                containing: "ready to accept connections", in: [.stderr], timeout: .seconds(min(60, environment.secondsLeft)))
        } catch {
            await process.stop(graceSeconds: 1)
            throw error
        }
        return RunningPostgres(process: process, directory: directory)
    }
}
