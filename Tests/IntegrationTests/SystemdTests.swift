import Foundation
import Testing

/// mdegate as a systemd service, checked with what works without systemd as PID 1: the unit
/// checkers of systemd-analyze, systemd-sysusers/-tmpfiles on a scratch root,
/// systemd-socket-activate for socket activation, and a datagram socket of the test's own as
/// `NOTIFY_SOCKET`.
@Suite("systemd: units, socket activation and the notify protocol", .timeLimit(.minutes(HarnessTime.suiteMinutes)))
struct SystemdTests {
    /// The command line the shipped unit runs, matching `make install`'s paths.
    static let installedCommand = "ExecStart=/usr/local/bin/mdegate serve --config /etc/mdegate/config.yaml"

    // MARK: Unit files

    @Test(
        "systemd-analyze verify accepts mdegate.socket and mdegate.service without a single complaint",
        .enabled(if: SystemdTools.analyze != nil, "systemd-analyze is not installed (Debian package systemd)"))
    func unitsVerify() async throws {
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        let units = try Self.stageUnits(in: directory)

        let result = try await SystemdTools.run(SystemdTools.analyze!, ["verify", units.socket, units.service])

        #expect(result.exitCode == 0, "\(result)")
        // verify exits 0 on an unknown key or a value it ignores; it still names the unit.
        let complaints = (result.stdout + "\n" + result.stderr).split(separator: "\n").filter { $0.contains("mdegate") }
        #expect(complaints.isEmpty, "systemd-analyze verify complained:\n\(complaints.joined(separator: "\n"))")
    }

    @Test(
        "systemd-analyze security --offline=true rates mdegate.service's exposure below 2.0",
        .enabled(if: SystemdTools.analyze != nil, "systemd-analyze is not installed (Debian package systemd)"))
    func securityExposure() async throws {
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        let units = try Self.stageUnits(in: directory)

        let result = try await SystemdTools.run(SystemdTools.analyze!, ["security", "--offline=true", units.service])

        let marker = "Overall exposure level for mdegate.service:"
        let line = try #require(
            result.stdout.split(separator: "\n").first { $0.contains(marker) }, "no '\(marker)' line in\n\(result)")
        let score = try #require(
            line.components(separatedBy: marker)[1].split(separator: " ").first.flatMap { Double($0) },
            "cannot read the score from '\(line)'")
        #expect(score < 2.0, "exposure \(score):\n\(result.stdout)")
    }

    @Test("the units keep the promises the README makes: notify, watchdog, credential, the socket's group and mode")
    func unitContract() throws {
        let service = try Self.settings(of: "mdegate.service")
        #expect(service["Type"] == ["notify"])
        #expect(service["ExecStart"] == [String(Self.installedCommand.dropFirst("ExecStart=".count))])
        #expect(service["ExecReload"] == ["/bin/kill -HUP $MAINPID"])
        #expect(service["WatchdogSec"] == ["30s"])
        #expect(service["User"] == ["mdegate"])
        #expect(service["StateDirectory"] == ["mdegate"])
        #expect(service["RuntimeDirectory"] == ["mdegate"])
        #expect(service["ConfigurationDirectory"] == ["mdegate"])
        #expect(service["LoadCredential"] == ["client-secret:/etc/mdegate/client-secret"])
        #expect(service["Requires"] == ["mdegate.socket"])
        // A user namespace would turn every client's SO_PEERCRED uid into "nobody".
        #expect(service["PrivateUsers"] == nil)

        let socket = try Self.settings(of: "mdegate.socket")
        #expect(socket["ListenStream"] == ["/run/mdegate/mdegate.sock"])
        #expect(socket["SocketMode"] == ["0660"])
        #expect(socket["SocketUser"] == ["mdegate"])
        #expect(socket["SocketGroup"] == ["mdegate-clients"])
        #expect(socket["Service"] == ["mdegate.service"])
        #expect(socket["Accept"] == ["no"])
    }

    @Test(
        "the sysusers.d file creates the mdegate user and the mdegate-clients group; tmpfiles.d gives the config to mdegate's group and the client secret to root alone",
        .enabled(if: SystemdTools.sysusers != nil && SystemdTools.tmpfiles != nil, "systemd-sysusers or systemd-tmpfiles is not installed"),
        .enabled(if: getuid() == 0, "needs root: systemd-tmpfiles sets owners on the scratch root"))
    func sysusersAndTmpfiles() async throws {
        let root = try TemporaryDirectory()
        defer { root.remove() }
        try FileManager.default.createDirectory(atPath: root.file("etc/mdegate"), withIntermediateDirectories: true)
        try root.write("# the example config\n", to: "etc/mdegate/config.yaml")

        let users = try await SystemdTools.run(
            SystemdTools.sysusers!, ["--root=\(root.path)", SystemdTools.unitFile("mdegate.sysusers").path])
        #expect(users.exitCode == 0, "\(users)")
        let passwd = try String(contentsOfFile: root.file("etc/passwd"), encoding: .utf8)
        let group = try String(contentsOfFile: root.file("etc/group"), encoding: .utf8)
        let user = try #require(passwd.split(separator: "\n").first { $0.hasPrefix("mdegate:") }, "\(passwd)")
        #expect(user.hasSuffix(":/var/lib/mdegate:/usr/sbin/nologin"), "\(user)")
        let mdegateGID = try #require(Self.groupID("mdegate", in: group), "\(group)")
        #expect(Self.groupID("mdegate-clients", in: group) != nil, "\(group)")

        let files = try await SystemdTools.run(
            SystemdTools.tmpfiles!, ["--root=\(root.path)", "--create", SystemdTools.unitFile("mdegate.tmpfiles").path])
        #expect(files.exitCode == 0, "\(files)")
        let directory = try Self.status(root.file("etc/mdegate"))
        #expect(directory.mode == 0o750 && directory.uid == 0 && directory.gid == mdegateGID, "\(directory)")
        let config = try Self.status(root.file("etc/mdegate/config.yaml"))
        #expect(config.mode == 0o640 && config.uid == 0 && config.gid == mdegateGID, "\(config)")
        // Present (so LoadCredential= does not fail the start on systemd 252) and root's alone.
        let secret = try Self.status(root.file("etc/mdegate/client-secret"))
        #expect(secret.mode == 0o600 && secret.uid == 0 && secret.gid == 0, "\(secret)")
    }

    // MARK: Socket activation

    @Test(
        "under systemd-socket-activate the first client waits in the backlog, starts the daemon, and is served on the passed socket, which the daemon neither chmods nor removes",
        .enabled(if: SystemdTools.socketActivate != nil, "systemd-socket-activate is not installed (Debian package systemd)"))
    func socketActivation() async throws {
        try await withSimulator { directory, simulator in
            let configPath = try Self.writeConfiguration(in: directory, upstream: simulator)
            let activated = directory.file("activated.sock")
            let process = try await TestProcess(
                name: "systemd-socket-activate mdegate serve",
                executable: SystemdTools.socketActivate!,
                arguments: ["-l", activated] + SystemdTools.socketActivateSanitizerArguments
                    + [Binaries.gateway.path, "serve", "--config", configPath],
                environment: TestProcess.environment())
            do {
                try await process.waitForLine(containing: "Listening on \(activated)")
                let modeBefore = try Self.status(activated).mode
                // systemd-socket-activate execs the daemon on the first connection, like a socket unit.
                #expect(!process.lines(.stderr).contains { $0.contains("mdegate is ready") })

                let client = try GatewayClient(socketPath: activated)
                let id = machineActionID()
                let answer = try await client.cancel(id)
                client.shutdown()

                #expect(answer.status == 200, "\(answer.summary)")
                #expect(try answer.json()["id"]?.string == id)
                #expect(try await simulator.stats().arrivals(for: id) == 1)
                let ready = try await process.waitForLine(containing: "mdegate is ready")
                #expect(ready.contains("\(activated) (descriptor 3 from systemd)"), "\(ready)")
                #expect(!FileManager.default.fileExists(atPath: directory.file("gw.sock")), "socket.path was bound although systemd passed a socket")
                #expect(try Self.status(activated).mode == modeBefore, "the daemon changed the mode of systemd's socket")

                process.send(SIGTERM)
                #expect(try await process.waitForExit() == .exited(0))
                // The socket file is the socket unit's: it stays for the next activation.
                #expect(FileManager.default.fileExists(atPath: activated))
            } catch {
                FileHandle.standardError.write(Data("\(process.diagnostics())\n".utf8))
                await process.stop()
                throw error
            }
        }
    }

    // MARK: Notify protocol

    @Test("with NOTIFY_SOCKET and WATCHDOG_USEC the daemon sends READY=1 once serving, WATCHDOG=1, STATUS= with quota use, and STOPPING=1 on SIGTERM")
    func notifyProtocol() async throws {
        try await withSimulator { directory, simulator in
            let configPath = try Self.writeConfiguration(in: directory, upstream: simulator)
            let notify = try NotifySocket(path: directory.file("notify.sock"))
            defer { notify.close() }
            let process = try await TestProcess(
                name: "mdegate serve",
                executable: Binaries.gateway,
                arguments: ["serve", "--config", configPath],
                environment: TestProcess.environment(adding: ["NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": "200000"]))
            do {
                let ready = try await notify.waitForMessage(line: "READY=1")
                #expect(ready.contains("STATUS=serving; queue 0"), "\(ready)")
                // READY=1 comes once the socket serves: a client is answered at once.
                let client = try GatewayClient(socketPath: directory.file("gw.sock"))
                let health = try await client.http.get("/healthz")
                #expect(health.status == 200, "\(health.summary)")

                try await notify.waitForMessage(line: "WATCHDOG=1")

                let answer = try await client.cancel(machineActionID())
                client.shutdown()
                #expect(answer.status == 200, "\(answer.summary)")
                try await notify.waitForMessage("STATUS= showing the call spent") {
                    $0.hasPrefix("STATUS=") && $0.contains("quota used 1 of 100/1m")
                }

                process.send(SIGTERM)
                try await notify.waitForMessage(line: "STOPPING=1")
                #expect(try await process.waitForExit() == .exited(0))

                let lines = notify.messages.flatMap { $0.split(separator: "\n").map(String.init) }
                #expect(lines.filter { $0 == "READY=1" }.count == 1, "\(notify.messages)")
                #expect(lines.firstIndex(of: "READY=1")! < lines.firstIndex(of: "STOPPING=1")!)
            } catch {
                FileHandle.standardError.write(Data("\(process.diagnostics())\nnotifications: \(notify.messages)\n".utf8))
                await process.stop()
                throw error
            }
        }
    }

    @Test("a watchdog meant for another process (WATCHDOG_PID) is not fed, while STATUS= still arrives at an abstract NOTIFY_SOCKET (@name)")
    func watchdogOfAnotherProcess() async throws {
        try await withSimulator { directory, simulator in
            let configPath = try Self.writeConfiguration(in: directory, upstream: simulator)
            let notify = try NotifySocket(path: "@mdegate-test-\(randomSuffix())")
            defer { notify.close() }
            let process = try await TestProcess(
                name: "mdegate serve",
                executable: Binaries.gateway,
                arguments: ["serve", "--config", configPath],
                environment: TestProcess.environment(adding: [
                    "NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": "200000", "WATCHDOG_PID": "1",
                ]))
            do {
                try await notify.waitForMessage(line: "READY=1")
                let client = try GatewayClient(socketPath: directory.file("gw.sock"))
                let answer = try await client.cancel(machineActionID())
                client.shutdown()
                #expect(answer.status == 200, "\(answer.summary)")
                // The periodic status carries WATCHDOG=1 whenever the watchdog is fed.
                let status = try await notify.waitForMessage("STATUS= showing the call spent") {
                    $0.hasPrefix("STATUS=") && $0.contains("quota used 1 of 100/1m")
                }
                #expect(!status.contains("WATCHDOG=1"))
                #expect(!notify.messages.contains { $0.contains("WATCHDOG=1") }, "\(notify.messages)")

                process.send(SIGTERM)
                #expect(try await process.waitForExit() == .exited(0))
            } catch {
                FileHandle.standardError.write(Data("\(process.diagnostics())\nnotifications: \(notify.messages)\n".utf8))
                await process.stop()
                throw error
            }
        }
    }

    // MARK: Helpers

    /// Runs `body` with a fresh directory and simulator, in its share of the machine, and cleans up.
    private func withSimulator(_ body: (TemporaryDirectory, SimulatorProcess) async throws -> Void) async throws {
        try await sharingTheMachine {
            let directory = try TemporaryDirectory()
            let simulator: SimulatorProcess
            do {
                simulator = try await SimulatorProcess()
            } catch {
                directory.remove()
                throw error
            }
            do {
                try await body(directory, simulator)
            } catch {
                await simulator.stop()
                directory.remove()
                throw error
            }
            await simulator.stop()
            directory.remove()
        }
    }

    /// A gateway configuration in `directory` (socket.path `gw.sock`) with a one-minute limit, so a
    /// spent call stays visible in the status for the whole test.
    private static func writeConfiguration(in directory: TemporaryDirectory, upstream: SimulatorProcess) throws -> String {
        var options = GatewayOptions()
        options.limits = ["100/1m"]
        options.logLevel = "info"
        try directory.write(upstream.token, to: "token")
        try directory.write(options.yaml(directory: directory, upstream: upstream.baseURL), to: "config.yaml")
        return directory.file("config.yaml")
    }

    /// Copies the shipped units into `directory` with ExecStart pointing at the binary under test:
    /// systemd-analyze checks that the command exists, and /usr/local/bin/mdegate is not installed here.
    private static func stageUnits(in directory: TemporaryDirectory) throws -> (service: String, socket: String) {
        let service = try String(contentsOf: SystemdTools.unitFile("mdegate.service"), encoding: .utf8)
        guard service.contains(installedCommand) else {
            throw HarnessError("systemd/mdegate.service has no line '\(installedCommand)'; keep it in step with `make install`")
        }
        try directory.write(
            service.replacingOccurrences(of: "ExecStart=/usr/local/bin/mdegate ", with: "ExecStart=\(Binaries.gateway.path) "),
            to: "mdegate.service")
        try directory.write(String(contentsOf: SystemdTools.unitFile("mdegate.socket"), encoding: .utf8), to: "mdegate.socket")
        return (directory.file("mdegate.service"), directory.file("mdegate.socket"))
    }

    /// The `Key=value` settings of a shipped unit, every value of a key in order (comments skipped).
    private static func settings(of unit: String) throws -> [String: [String]] {
        let text = try String(contentsOf: SystemdTools.unitFile(unit), encoding: .utf8)
        var settings: [String: [String]] = [:]
        for line in text.split(separator: "\n") where !line.hasPrefix("#") && !line.hasPrefix("[") {
            guard let equals = line.firstIndex(of: "=") else { continue }
            settings[String(line[..<equals]), default: []].append(String(line[line.index(after: equals)...]))
        }
        return settings
    }

    /// The id of group `name` in the text of an /etc/group.
    private static func groupID(_ name: String, in group: String) -> UInt32? {
        for line in group.split(separator: "\n") {
            let fields = line.split(separator: ":", omittingEmptySubsequences: false)
            if fields.count > 2, fields[0] == name { return UInt32(fields[2]) }
        }
        return nil
    }

    private struct FileStatus: CustomStringConvertible {
        var mode: mode_t
        var uid: uid_t
        var gid: gid_t
        var description: String { "mode \(String(mode, radix: 8)), owner \(uid):\(gid)" }
    }

    private static func status(_ path: String) throws -> FileStatus {
        var info = stat()
        guard lstat(path, &info) == 0 else { throw HarnessError("stat \(path): \(String(cString: strerror(errno)))") }
        return FileStatus(mode: info.st_mode & 0o7777, uid: info.st_uid, gid: info.st_gid)
    }
}
