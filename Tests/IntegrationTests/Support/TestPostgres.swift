import Foundation
import Logging
import PostgresNIO
import Testing

/// A throwaway PostgreSQL server for one test: `initdb` in a fresh directory, `pg_ctl start` on
/// a Unix socket in that directory (no TCP port, so tests never collide), `pg_ctl stop` and the
/// directory removed at the end. Debian's server binaries (`postgresql`, which the README's test
/// command installs). `initdb` refuses to run as root, so as root the directory is handed to the
/// `postgres` user and the server runs as that user.
final class TestPostgres: Sendable {
    let directory: String
    static let port = 5432
    static let user = "mdegate"
    /// The password the server asks for (scram-sha-256); nil: it trusts every local connection.
    let password: String?
    /// The loopback TCP port of a server that offers TLS (`start(tls:)`); nil: Unix socket only.
    let tcpPort: Int?

    /// The socket file's port number: the TCP port when there is one.
    var port: Int { tcpPort ?? Self.port }

    var socketPath: String { "\(directory)/.s.PGSQL.\(port)" }

    /// `shared_quota.url` for a gateway that reaches this server through its socket (a server
    /// without TCP, whose socket has the default port number).
    var socketURL: String { "postgresql://\(Self.user)@/postgres?host=\(directory)" }

    /// `shared_quota.url` through the socket of any server (its port given as libpq does).
    var socketURLWithPort: String { "postgresql://\(Self.user)@/postgres?host=\(directory)&port=\(port)" }

    /// `shared_quota.url` over TCP with TLS, for a server started with `tls:`.
    var tlsURL: String { "postgresql://\(Self.user)@127.0.0.1:\(port)/postgres?sslmode=verify-full" }

    private init(directory: String, password: String?, tcpPort: Int?) {
        self.directory = directory
        self.password = password
        self.tcpPort = tcpPort
    }

    /// `password`: the server asks every connection for it. `tls`: the server also listens on
    /// a free loopback port with TLS, presenting this certificate and key.
    static func start(password: String? = nil, tls: (certificate: String, key: String)? = nil) async throws -> TestPostgres {
        let bin = try binDirectory()
        var template = Array("/tmp/mdegate-pg-XXXXXX".utf8CString)
        guard mkdtemp(&template) != nil else { throw HarnessError("mkdtemp failed: errno \(errno)") }
        let directory = String(decoding: template.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        let server = TestPostgres(directory: directory, password: password, tcpPort: tls == nil ? nil : try freeLoopbackPort())
        do {
            if getuid() == 0 {
                guard let account = getpwnam("postgres") else {
                    throw HarnessError("running as root, but there is no postgres user to run the server as (install postgresql)")
                }
                guard chown(directory, account.pointee.pw_uid, account.pointee.pw_gid) == 0 else {
                    throw HarnessError("chown \(directory) to postgres failed: errno \(errno)")
                }
            }
            var initdb = ["-D", "\(directory)/data", "-U", user, "--no-sync", "-E", "UTF8", "--locale=C"]
            if let password {
                try server.writeOwned(password + "\n", to: "pwfile")
                initdb += ["-A", "scram-sha-256", "--pwfile", "\(directory)/pwfile"]
            } else {
                initdb += ["-A", "trust"]
            }
            try await server.run("\(bin)/initdb", initdb)
            if let tls {
                // The server reads its key only if no one else can (mode 0600, its own user's).
                try server.writeOwned(try String(contentsOfFile: tls.certificate, encoding: .utf8), to: "server.crt")
                try server.writeOwned(try String(contentsOfFile: tls.key, encoding: .utf8), to: "server.key")
            }
            try await server.startServer()
        } catch {
            server.remove()
            throw error
        }
        return server
    }

    /// Starts the server (again, after `stopServer`) on the same directory and port.
    func startServer() async throws {
        let bin = try Self.binDirectory()
        var options = "-k \(directory) -p \(port) -c fsync=off"
        if tcpPort != nil {
            options += " -c listen_addresses=127.0.0.1 -c ssl=on"
                + " -c ssl_cert_file=\(directory)/server.crt -c ssl_key_file=\(directory)/server.key"
        } else {
            options += " -c listen_addresses=''"
        }
        try await run(
            "\(bin)/pg_ctl", ["-D", "\(directory)/data", "-l", "\(directory)/log", "-w", "-t", "30", "-o", options, "start"])
    }

    /// Stops the server (a fast shutdown: connections are cut) and keeps its data.
    func stopServer() async throws {
        let bin = try Self.binDirectory()
        try await run("\(bin)/pg_ctl", ["-D", "\(directory)/data", "-m", "fast", "-w", "stop"])
    }

    /// Writes a file in the server's directory that only the server's user can read.
    private func writeOwned(_ text: String, to name: String) throws {
        let path = "\(directory)/\(name)"
        try text.write(toFile: path, atomically: false, encoding: .utf8)
        chmod(path, 0o600)
        if getuid() == 0, let account = getpwnam("postgres") {
            chown(path, account.pointee.pw_uid, account.pointee.pw_gid)
        }
    }

    /// Stops the server at once and removes its directory.
    func stop() async {
        if let bin = try? Self.binDirectory() {
            try? await run("\(bin)/pg_ctl", ["-D", "\(directory)/data", "-m", "immediate", "-w", "stop"])
        }
        remove()
    }

    private func remove() {
        try? FileManager.default.removeItem(atPath: directory)
    }

    func client(logger: Logger) -> PostgresClient {
        PostgresClient(
            configuration: .init(unixSocketPath: socketPath, username: Self.user, password: password, database: "postgres"),
            backgroundLogger: logger)
    }

    /// The newest installed server's binaries, `/usr/lib/postgresql/<version>/bin`.
    static func binDirectory() throws -> String {
        let root = "/usr/lib/postgresql"
        let versions = ((try? FileManager.default.contentsOfDirectory(atPath: root)) ?? [])
            .compactMap(Int.init).sorted()
        guard let newest = versions.last, FileManager.default.isExecutableFile(atPath: "\(root)/\(newest)/bin/initdb") else {
            throw HarnessError("no PostgreSQL server under \(root) (the README's test command installs Debian's postgresql)")
        }
        return "\(root)/\(newest)/bin"
    }

    /// Runs a server tool to completion, as the postgres user when we are root, its output in a
    /// file. Spawned and reaped here rather than with Foundation's `Process`: `pg_ctl start`
    /// leaves the server running, and the server inherits what `Process` watches for the end of
    /// the tool, so `Process` would wait for the server to stop.
    private func run(_ executable: String, _ arguments: [String]) async throws {
        let command = getuid() == 0 ? ["/usr/sbin/runuser", "-u", "postgres", "--", executable] + arguments : [executable] + arguments
        let outputPath = "\(directory).\(URL(fileURLWithPath: executable).lastPathComponent).out"
        defer { try? FileManager.default.removeItem(atPath: outputPath) }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, outputPath, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        posix_spawn_file_actions_adddup2(&actions, 1, 2)
        var pid: pid_t = 0
        let argv = command.map { strdup($0) } + [nil]
        defer { for argument in argv { free(argument) } }
        let spawned = posix_spawn(&pid, command[0], &actions, nil, argv, environ)
        guard spawned == 0 else { throw HarnessError("cannot start \(command[0]): errno \(spawned)") }
        let child = pid
        let status: Int32 = await withCheckedContinuation { continuation in
            Thread.detachNewThread {
                var status: Int32 = 0
                while waitpid(child, &status, 0) == -1, errno == EINTR {}
                continuation.resume(returning: status)
            }
        }
        let exited = status & 0x7f == 0 ? (status >> 8) & 0xff : -1
        guard exited == 0 else {
            let text = (try? String(contentsOfFile: outputPath, encoding: .utf8)) ?? ""
            let log = (try? String(contentsOfFile: "\(directory)/log", encoding: .utf8)) ?? ""
            throw HarnessError("\(command.joined(separator: " ")) ended with status \(status): \(text)\n\(log)")
        }
    }
}

/// Runs `body` with a running client of a fresh server, then stops both, also when `body` throws.
/// It takes its share of the machine like a rig (`sharingTheMachine`): starting a server is
/// heavy, and must not delay a test that runs alone because its upstream judges timing.
func withPostgres<T: Sendable>(_ body: @Sendable (PostgresClient) async throws -> T) async throws -> T {
    try await sharingTheMachine { try await withServer(body) }
}

private func withServer<T: Sendable>(_ body: @Sendable (PostgresClient) async throws -> T) async throws -> T {
    let server = try await TestPostgres.start()
    var logger = Logger(label: "test-postgres")
    logger.logLevel = .warning
    let client = server.client(logger: logger)
    do {
        let value = try await withThrowingTaskGroup(of: T?.self) { group in
            group.addTask {
                await client.run()
                return nil
            }
            defer { group.cancelAll() }
            return try await body(client)
        }
        await server.stop()
        return value
    } catch {
        await server.stop()
        throw error
    }
}
