import Foundation
import Testing

/// The `mdegate` command line, as an operator or a shell script uses it.
@Suite("Command line: cancel, status, request, check-config", .timeLimit(.minutes(HarnessTime.suiteMinutes)))
struct CommandLineTests {
    @Test("mdegate cancel prints the upstream's JSON and exits 0 (socket from MDEGATE_SOCKET)")
    func cancelSucceeds() async throws {
        try await withRig { rig in
            let id = machineActionID()
            let result = try await rig.gateway.cli(["cancel", id, "--comment", "from the shell"])
            #expect(result.exitCode == 0, "\(result)")
            let body = try JSON(parsing: result.stdout)
            #expect(body["id"]?.string == id, "\(result)")
            #expect(body["cancellationComment"]?.string == "from the shell")
            #expect(try await rig.simulator.stats().arrivals(for: id) == 1)
        }
    }

    @Test("mdegate cancel exits 1 when the gateway answers non-2xx, and still prints the answer")
    func cancelNotFound() async throws {
        try await withRig { rig in
            let result = try await rig.gateway.cli(["cancel", unknownMachineActionID(), "--comment", "gone"])
            #expect(result.exitCode == 1, "\(result)")
            #expect(try JSON(parsing: result.stdout)["error"]?["code"]?.string == "ResourceNotFound", "\(result)")
        }
    }

    @Test("mdegate cancel exits 1 on input the gateway refuses (a comment over 1,000 characters), and prints the refusal")
    func cancelRefused() async throws {
        try await withRig { rig in
            let result = try await rig.gateway.cli(["cancel", machineActionID(), "--comment", String(repeating: "x", count: 1001)])
            #expect(result.exitCode == 1, "\(result)")
            #expect(try JSON(parsing: result.stdout)["error"]?["code"]?.string == "InvalidRequestBody", "\(result)")
            #expect(try await rig.simulator.stats().arrivals == 0)
        }
    }

    @Test("mdegate cancel exits 3 when the gateway cannot be reached")
    func cancelUnreachable() async throws {
        try await sharingTheMachine {
            let directory = try TemporaryDirectory()
            defer { directory.remove() }
            let missing = directory.file("missing.sock")
            let byFlag = try await CommandResult.run(["cancel", machineActionID(), "--comment", "x", "--socket", missing])
            #expect(byFlag.exitCode == 3, "\(byFlag)")
            let byEnvironment = try await CommandResult.run(
                ["cancel", machineActionID(), "--comment", "x"], environment: ["MDEGATE_SOCKET": missing])
            #expect(byEnvironment.exitCode == 3, "\(byEnvironment)")
        }
    }

    @Test("--socket wins over MDEGATE_SOCKET")
    func socketFlagWins() async throws {
        try await withRig { rig in
            let result = try await rig.gateway.cli(
                ["cancel", machineActionID(), "--comment", "x", "--socket", rig.gateway.socketPath],
                environment: ["MDEGATE_SOCKET": rig.directory.file("missing.sock")])
            #expect(result.exitCode == 0, "\(result)")
        }
    }

    @Test("mdegate cancel --async prints the record; mdegate request shows it as a table or JSON")
    func asyncAndRequest() async throws {
        try await withRig { rig in
            let id = machineActionID()
            let accepted = try await rig.gateway.cli(["cancel", id, "--comment", "later", "--async", "--client", "cli-test"])
            #expect(accepted.exitCode == 0, "\(accepted)")
            let record = try JSON(parsing: accepted.stdout)
            let rid = try #require(record["id"]?.string, "\(accepted)")
            #expect(record["client"]?["name"]?.string == "cli-test", "\(accepted)")
            _ = try await rig.client.finishedRecord(rid)

            let json = try await rig.gateway.cli(["request", rid, "--json"])
            #expect(json.exitCode == 0, "\(json)")
            let shown = try JSON(parsing: json.stdout)
            #expect(shown["id"]?.string == rid)
            #expect(shown["state"]?.string == "done")

            let table = try await rig.gateway.cli(["request", rid])
            #expect(table.exitCode == 0, "\(table)")
            #expect(table.stdout.contains(rid), "\(table)")
            #expect(table.stdout.contains("done"), "\(table)")

            let unknown = try await rig.gateway.cli(["request", machineActionID(), "--json"])
            #expect(unknown.exitCode == 1, "\(unknown)")
        }
    }

    @Test("mdegate cancel --wait answers 202 with the record when the quota is spent")
    func cancelWait() async throws {
        var options = GatewayOptions()
        options.limits = ["1/1m"]
        try await withRig(gateway: options) { rig in
            let first = try await rig.gateway.cli(["cancel", machineActionID(), "--comment", "spends the slot"])
            #expect(first.exitCode == 0, "\(first)")
            let waited = try await rig.gateway.cli(["cancel", machineActionID(), "--comment", "waits", "--wait", "1"])
            #expect(waited.exitCode == 0, "202 is a 2xx: \(waited)")
            #expect(try JSON(parsing: waited.stdout)["state"]?.string == "queued", "\(waited)")
        }
    }

    @Test("mdegate status on an idle gateway folds every API into one line with the limits; --json prints the status document")
    func status() async throws {
        try await withRig { rig in
            let table = try await rig.gateway.cli(["status"])
            #expect(table.exitCode == 0, "\(table)")
            #expect(table.stdout.contains("APIs idle (5/1s, 12/4s)"), "\(table)")
            #expect(!table.stdout.contains("cancel:"), "an idle API gets no rows of its own: \(table)")

            let json = try await rig.gateway.cli(["status", "--json"])
            #expect(json.exitCode == 0, "\(json)")
            let document = try JSON(parsing: json.stdout)
            #expect(document["limits"]?.array?.count == 2, "\(json)")
            #expect(document["queue"]?["depth"]?.int == 0)
            let names = document["apis"]?.array?.compactMap { $0["name"]?.string } ?? []
            #expect(names.first == "cancel" && names.contains("isolate"), "\(json)")
            #expect(table.stdout.contains("all \(names.count) APIs idle"), "\(table)")
        }
    }

    @Test("mdegate status exits 3 when the gateway cannot be reached")
    func statusUnreachable() async throws {
        try await sharingTheMachine {
            let directory = try TemporaryDirectory()
            defer { directory.remove() }
            let result = try await CommandResult.run(["status", "--socket", directory.file("missing.sock")])
            #expect(result.exitCode == 3, "\(result)")
        }
    }

    @Test("mdegate check-config accepts a valid file and prints the effective configuration")
    func checkConfigValid() async throws {
        try await sharingTheMachine {
            let directory = try TemporaryDirectory()
            defer { directory.remove() }
            try directory.write("sim-token", to: "token")
            try directory.write(GatewayOptions().yaml(directory: directory, upstream: "http://127.0.0.1:9"), to: "config.yaml")
            let result = try await CommandResult.run(["check-config", "--config", directory.file("config.yaml")])
            #expect(result.exitCode == 0, "\(result)")
            #expect(result.stdout.contains("5/1s"), "\(result)")
            #expect(result.stdout.contains("12/4s"), "\(result)")
            #expect(result.stdout.contains(directory.file("gw.sock")), "\(result)")
            #expect(!result.stdout.contains("sim-token"), "the token never appears: \(result)")
        }
    }

    @Test("mdegate check-config warns about an unknown key instead of letting a typo pass silently")
    func checkConfigUnknownKey() async throws {
        try await sharingTheMachine {
            let directory = try TemporaryDirectory()
            defer { directory.remove() }
            try directory.write("sim-token", to: "token")
            let yaml = GatewayOptions().yaml(directory: directory, upstream: "http://127.0.0.1:9")
                .replacingOccurrences(of: "retry:\n", with: "retry:\n  max_atempts: 3\n")
            try directory.write(yaml, to: "config.yaml")
            let result = try await CommandResult.run(["check-config", "--config", directory.file("config.yaml")])
            #expect((result.stdout + result.stderr).contains("max_atempts"), "\(result)")
        }
    }

    @Test("mdegate check-config refuses an invalid file and names the key", arguments: InvalidConfiguration.all)
    func checkConfigInvalid(_ invalid: InvalidConfiguration) async throws {
        try await sharingTheMachine {
            let directory = try TemporaryDirectory()
            defer { directory.remove() }
            try directory.write("sim-token", to: "token")
            try directory.write(invalid.yaml(directory: directory), to: "config.yaml")
            let result = try await CommandResult.run(["check-config", "--config", directory.file("config.yaml")])
            #expect(result.exitCode == 1, "\(result)")
            #expect((result.stdout + result.stderr).contains(invalid.key), "\(result)")
        }
    }
}

/// The daemon's own lifetime.
@Suite("Daemon: start-up and shutdown", .timeLimit(.minutes(HarnessTime.suiteMinutes)))
struct DaemonLifecycleTests {
    @Test("mdegate serve with an invalid configuration exits non-zero and names the key", arguments: InvalidConfiguration.all)
    func serveRefusesInvalidConfiguration(_ invalid: InvalidConfiguration) async throws {
        try await sharingTheMachine {
            let directory = try TemporaryDirectory()
            defer { directory.remove() }
            try directory.write("sim-token", to: "token")
            try directory.write(invalid.yaml(directory: directory), to: "config.yaml")
            let result = try await CommandResult.run(["serve", "--config", directory.file("config.yaml")])
            #expect(result.exitCode != 0, "\(result)")
            #expect(result.end != .signalled(SIGSEGV) && result.end != .signalled(SIGILL) && result.end != .signalled(SIGTRAP), "\(result)")
            #expect(result.stderr.contains(invalid.key), "\(result)")
            #expect(!FileManager.default.fileExists(atPath: directory.file("gw.sock")), "no socket for a daemon that did not start")
        }
    }

    @Test("SIGTERM stops a serving daemon with exit status 0")
    func sigtermExitsCleanly() async throws {
        try await withRig { rig in
            let answer = try await rig.client.cancel(machineActionID())
            #expect(answer.status == 200)
            rig.client.shutdown()  // no connection left open
            rig.gateway.requestStop()
            let end = try await rig.gateway.process.waitForExit(timeout: .seconds(20))
            #expect(end == .exited(0), "\(rig.gateway.process.diagnostics())")
        }
    }

    @Test("SIGTERM stops a serving daemon with exit status 0 while a client holds an idle keep-alive connection")
    func sigtermClosesIdleConnections() async throws {
        try await withRig { rig in
            let answer = try await rig.client.cancel(machineActionID())
            #expect(answer.status == 200)
            // rig.client keeps its connection open for reuse, as HTTP clients do.
            rig.gateway.requestStop()
            let end = try await rig.gateway.process.waitForExit(timeout: .seconds(20))
            #expect(end == .exited(0), "\(rig.gateway.process.diagnostics())")
        }
    }

    @Test("the socket file gets the configured mode 0660")
    func socketMode() async throws {
        try await withRig { rig in
            let attributes = try FileManager.default.attributesOfItem(atPath: rig.gateway.socketPath)
            let mode = (attributes[.posixPermissions] as? NSNumber)?.intValue ?? -1
            #expect(mode == 0o660, "mode \(String(mode, radix: 8))")
        }
    }
}

/// A configuration that must be refused, and the key the refusal must name.
struct InvalidConfiguration: Sendable, CustomTestStringConvertible {
    var key: String
    var change: @Sendable (inout GatewayOptions) -> Void
    var upstream = "http://127.0.0.1:9"

    var testDescription: String { key }

    func yaml(directory: TemporaryDirectory) -> String {
        var options = GatewayOptions()
        change(&options)
        return options.yaml(directory: directory, upstream: upstream)
    }

    static let all: [InvalidConfiguration] = [
        InvalidConfiguration(key: "quota.limits") { $0.limits = ["five per second"] },
        InvalidConfiguration(key: "quota.guard") { $0.guardBand = "soon" },
        InvalidConfiguration(key: "retry.max_attempts") { $0.maxAttempts = 0 },
        InvalidConfiguration(key: "upstream.base_url", change: { _ in }, upstream: "http://example.com"),
    ]
}
