import Foundation
import Testing

/// The machine-action commands (`isolate`, `scan`, …, `action`, `actions`) and the per-API
/// views of `status` and `request`.
///
/// Most tests here use `--async`: the gateway answers once the request is stored, before the
/// upstream is called, so the record shows exactly what the command asked for whatever the
/// upstream then says. The tests marked "[simulator machine routes]" need the simulator to serve
/// Microsoft's machine routes.
@Suite("Command line: the machine-action family", .timeLimit(.minutes(HarnessTime.suiteMinutes)))
struct CommandLineActionTests {
    @Test("a typo fails before the gateway is called: exit 64 and a message that says what was expected", arguments: CommandLineTypo.all)
    func typoFailsLocally(_ typo: CommandLineTypo) async throws {
        try await sharingTheMachine {
            let directory = try TemporaryDirectory()
            defer { directory.remove() }
            // Had the command tried the socket, it would have exited 3 (unreachable).
            let result = try await CommandResult.run(typo.arguments + ["--socket", directory.file("missing.sock")])
            #expect(result.exitCode == 64, "\(result)")
            #expect(result.stderr.contains(typo.message), "\(result)")
        }
    }

    @Test("well-formed calls get past the local checks (types in any case): exit 3 on a socket that is not there", arguments: [
        ["isolate", cliMachineID(), "--comment", "x", "--type", "unmanageddevice"],
        ["scan", cliMachineID(), "--comment", "x", "--type", "FULL"],
        ["quarantine", cliMachineID(), "--sha1", cliSHA1(), "--comment", "x", "--wait", "2.5"],
        ["action", machineActionID().uppercased(), "--async"],
        ["actions", "--filter", "status eq 'Pending'", "--top", "1", "--skip", "0"],
        ["actions"],
    ])
    func wellFormedReachesTheSocket(_ arguments: [String]) async throws {
        try await sharingTheMachine {
            let directory = try TemporaryDirectory()
            defer { directory.remove() }
            let result = try await CommandResult.run(arguments + ["--socket", directory.file("missing.sock")])
            #expect(result.exitCode == 3, "\(result)")
            #expect(result.stderr.contains("cannot reach the gateway"), "\(result)")
        }
    }

    @Test("mdegate isolate --async answers 202 with the record (api isolate, the machine, IsolationType); mdegate request shows them")
    func isolateAsync() async throws {
        try await withRig { rig in
            let machine = cliMachineID()
            let accepted = try await rig.gateway.cli(
                ["isolate", machine, "--comment", "alert 1234", "--type", "selective", "--async", "--client", "soar"])
            #expect(accepted.exitCode == 0, "\(accepted)")
            let record = try JSON(parsing: accepted.stdout)
            #expect(record["api"]?.string == "isolate", "\(accepted)")
            #expect(record["target"]?.string == machine, "\(accepted)")
            #expect(record["options"] == ["IsolationType": "Selective"], "the type in Microsoft's spelling: \(accepted)")
            #expect(record["comment"]?.string == "alert 1234", "\(accepted)")
            #expect(record["machineActionId"]?.isNull == true, "\(accepted)")
            #expect(record["client"]?["name"]?.string == "soar", "\(accepted)")
            let rid = try #require(record["id"]?.string, "\(accepted)")

            let table = try await rig.gateway.cli(["request", rid])
            #expect(table.exitCode == 0, "\(table)")
            let rows = table.stdout.split(separator: "\n").map { $0.split(separator: " ", omittingEmptySubsequences: true) }
            func row(_ field: String) -> String? {
                rows.first { $0.first.map(String.init) == field }.map { $0.dropFirst().joined(separator: " ") }
            }
            #expect(row("api") == "isolate", "\(table)")
            #expect(row("machine") == machine, "\(table)")
            #expect(row("options") == "IsolationType=Selective", "\(table)")
            #expect(row("comment") == "alert 1234", "\(table)")
        }
    }

    @Test("every action command makes its own API's call: the record names the API, the target, the options and the comment")
    func everyCommandMakesItsCall() async throws {
        // A listing filter with every character that needs encoding in a query value.
        let filter = "requestor eq 'a+b&c=d%20/é?' and status eq 'Pending'"
        let sha1 = cliSHA1()
        let actionID = machineActionID()
        let cases: [(arguments: [String], api: String, target: String?, options: JSON, comment: String?)] = [
            (["isolate", "M", "--comment", "c"], "isolate", "M", ["IsolationType": "Full"], "c"),
            (["unisolate", "M", "--comment", "c"], "unisolate", "M", [:], "c"),
            (["scan", "M", "--comment", "c"], "run_antivirus_scan", "M", ["ScanType": "Quick"], "c"),
            (["scan", "M", "--comment", "c", "--type", "full"], "run_antivirus_scan", "M", ["ScanType": "Full"], "c"),
            (["collect", "M", "--comment", "c"], "collect_investigation_package", "M", [:], "c"),
            (["restrict", "M", "--comment", "c"], "restrict_code_execution", "M", [:], "c"),
            (["unrestrict", "M", "--comment", "c"], "unrestrict_code_execution", "M", [:], "c"),
            (["quarantine", "M", "--sha1", sha1, "--comment", "c"], "stop_and_quarantine_file", "M", ["Sha1": .string(sha1)], "c"),
            (["cancel", actionID, "--comment", "c"], "cancel", actionID, [:], "c"),
            (["action", actionID], "get_machine_action", actionID, [:], nil),
            (
                ["actions", "--filter", filter, "--top", "5", "--skip", "2"], "list_machine_actions", "",
                ["$filter": .string(filter), "$top": "5", "$skip": "2"], nil
            ),
        ]
        try await withRig { rig in
            for (index, call) in cases.enumerated() {
                // A machine of its own per case, so no two calls coalesce.
                let machine = cliMachineID()
                let arguments = call.arguments.map { $0 == "M" ? machine : $0 } + ["--async"]
                let target = call.target == "M" ? machine : call.target
                let comment = "case \(index)"
                let result = try await rig.gateway.cli(arguments.map { $0 == "c" ? comment : $0 })
                #expect(result.exitCode == 0, "\(arguments): \(result)")
                let record = try JSON(parsing: result.stdout)
                #expect(record["api"]?.string == call.api, "\(arguments): \(result)")
                #expect(record["target"]?.string == target, "\(arguments): \(result)")
                #expect(record["options"] == call.options, "\(arguments): \(result)")
                #expect(record["comment"]?.string == call.comment.map { _ in comment }, "\(arguments): \(result)")
                let isActionTarget = ["cancel", "get_machine_action"].contains(call.api)
                #expect(record["machineActionId"]?.string == (isActionTarget ? actionID : nil), "\(arguments): \(result)")
            }
        }
    }

    @Test("mdegate isolate --wait answers 202 queued once isolate's quota is spent, while cancel still has its own")
    func waitWhenTheAPIsQuotaIsSpent() async throws {
        var options = GatewayOptions()
        options.limits = ["1/1h"]
        try await withRig(gateway: options) { rig in
            let first = try await rig.gateway.cli(["isolate", cliMachineID(), "--comment", "spends the slot", "--async"])
            #expect(first.exitCode == 0, "\(first)")
            let waited = try await rig.gateway.cli(["isolate", cliMachineID(), "--comment", "waits", "--wait", "0.2"])
            #expect(waited.exitCode == 0, "202 is a 2xx: \(waited)")
            let record = try JSON(parsing: waited.stdout)
            #expect(record["state"]?.string == "queued", "\(waited)")
            #expect(record["api"]?.string == "isolate", "\(waited)")
            #expect(record["position"]?.int == 1, "\(waited)")

            let id = machineActionID()
            let cancel = try await rig.gateway.cli(["cancel", id, "--comment", "its own quota"])
            #expect(cancel.exitCode == 0, "\(cancel)")
            #expect(try JSON(parsing: cancel.stdout)["id"]?.string == id, "\(cancel)")
        }
    }

    @Test("mdegate status shows a busy API's limits, queue and next free slot, and folds the idle APIs into one line, within 80 columns")
    func statusGroupsByAPI() async throws {
        var options = GatewayOptions()
        options.limits = ["1/1h"]
        try await withRig(gateway: options) { rig in
            for machine in [cliMachineID(), cliMachineID()] {
                let accepted = try await rig.gateway.cli(["isolate", machine, "--comment", "x", "--async", "--client", "soar"])
                #expect(accepted.exitCode == 0, "\(accepted)")
            }
            let result = try await rig.gateway.cli(["status"])
            #expect(result.exitCode == 0, "\(result)")
            let lines = result.stdout.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
            let title = try #require(lines.firstIndex(of: "isolate: 1 queued"), "\(result)")
            let limit = lines[title + 1].split(separator: " ").map(String.init)
            #expect(limit.prefix(2) == ["1/1h", "1/1"], "the limit and its use: \(result)")
            #expect(limit.dropFirst(2).first == "in", "the next free slot is an hour away: \(result)")
            #expect(lines.contains("9 other APIs idle (1/1h)"), "\(result)")
            #expect(!lines.contains { $0.hasPrefix("cancel") }, "cancel is idle: \(result)")
            #expect(lines.contains { $0.hasPrefix("uid ") && $0.contains("/soar ") && $0.hasSuffix(" 1") }, "the client's queue: \(result)")
            #expect(lines.allSatisfy { $0.count <= 80 }, "\(result)")

            let json = try await rig.gateway.cli(["status", "--json"])
            #expect(json.exitCode == 0, "\(json)")
            let isolate = try JSON(parsing: json.stdout)["apis"]?.array?.first { $0["name"]?.string == "isolate" }
            #expect(isolate?["queued"]?.int == 1, "\(json)")
            #expect(isolate?["limits"]?[0]?["used"]?.int == 1, "\(json)")
        }
    }

    @Test("[simulator machine routes] mdegate isolate waits for the upstream, prints its MachineAction and exits 0; action and actions read it back")
    func isolateThenReadBack() async throws {
        try await withRig { rig in
            let machine = cliMachineID()
            let result = try await rig.gateway.cli(["isolate", machine, "--comment", "from the shell"])
            #expect(result.exitCode == 0, "\(result)")
            let action = try JSON(parsing: result.stdout)
            #expect(action["type"]?.string == "Isolate", "\(result)")
            #expect(action["machineId"]?.string == machine, "\(result)")
            #expect(action["requestorComment"]?.string == "from the shell", "\(result)")
            let id = try #require(action["id"]?.string, "\(result)")

            let read = try await rig.gateway.cli(["action", id])
            #expect(read.exitCode == 0, "\(read)")
            #expect(try JSON(parsing: read.stdout)["id"]?.string == id, "\(read)")

            let listed = try await rig.gateway.cli(["actions", "--filter", "machineId eq '\(machine)' and type eq 'Isolate'", "--top", "5"])
            #expect(listed.exitCode == 0, "\(listed)")
            #expect(listed.stdout.contains(id), "\(listed)")
        }
    }
}

/// Input the command line refuses itself, and what its message must say.
struct CommandLineTypo: Sendable, CustomTestStringConvertible {
    var arguments: [String]
    var message: String

    var testDescription: String { arguments.joined(separator: " ") }

    static let all: [CommandLineTypo] = [
        CommandLineTypo(arguments: ["isolate", "abc", "--comment", "x"], message: "not 40 hex digits"),
        CommandLineTypo(arguments: ["isolate", String(cliMachineID().dropLast()), "--comment", "x"], message: "not 40 hex digits"),
        CommandLineTypo(arguments: ["isolate", String(cliMachineID().dropLast()) + "g", "--comment", "x"], message: "not 40 hex digits"),
        CommandLineTypo(
            arguments: ["isolate", cliMachineID(), "--comment", "x", "--type", "Partial"],
            message: "'Full', 'Selective' or 'UnManagedDevice'"),
        CommandLineTypo(arguments: ["scan", cliMachineID(), "--comment", "x", "--type", "Deep"], message: "one of 'Quick' and 'Full'"),
        CommandLineTypo(arguments: ["unisolate", cliMachineID()], message: "--comment"),
        CommandLineTypo(arguments: ["quarantine", cliMachineID(), "--comment", "x"], message: "--sha1"),
        CommandLineTypo(arguments: ["quarantine", cliMachineID(), "--comment", "x", "--sha1", "d41d8cd98f00b204"], message: "--sha1 'd41d8cd98f00b204' is not 40 hex digits"),
        CommandLineTypo(arguments: ["collect", cliMachineID(), "--comment", "x", "--wait=-1"], message: "--wait"),
        CommandLineTypo(arguments: ["cancel", "not-a-guid", "--comment", "x"], message: "not a GUID"),
        CommandLineTypo(arguments: ["action", "988cc94e-7a8f-4b28-ab65-54970c5d501"], message: "not a GUID"),
        CommandLineTypo(arguments: ["actions", "--top", "0"], message: "--top"),
        CommandLineTypo(arguments: ["actions", "--skip=-1"], message: "--skip"),
        CommandLineTypo(arguments: ["actions", "--top", "ten"], message: "--top"),
        CommandLineTypo(arguments: ["actions", "--filter", ""], message: "--filter"),
    ]
}

/// A fresh random machine id: 40 lowercase hex digits, as MDE shows them.
func cliMachineID() -> String {
    (0..<40).map { _ in String("0123456789abcdef".randomElement()!) }.joined()
}

/// A fresh random SHA-1 in hex.
func cliSHA1() -> String { cliMachineID() }
