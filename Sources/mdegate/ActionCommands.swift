import ArgumentParser
import MDEGate
import MDEGateClient
import MDEGateCore
import MDEGateWire

// The machine-action family on the command line: one command per route of `Route.all`. Each
// command only checks its arguments and says which `ActionCall` it makes; `CallOptions.send`
// turns that call into the route's method, path and body (the local API's are Microsoft's),
// sends it with the caller's `Prefer` and `Mdegate-Client`, and prints the answer.

/// A command that makes one call of the machine-action family through the gateway.
protocol ActionCommand: AsyncParsableCommand {
    var options: CallOptions { get }
    /// The call, made from arguments `validate()` has accepted.
    var actionCall: ActionCall { get }
}

extension ActionCommand {
    func run() async throws {
        try await options.send(actionCall)
    }
}

/// What every call of the family takes besides its own arguments: how to be answered, the
/// client's name, and the socket.
struct CallOptions: ParsableArguments {
    @Flag(name: .long, help: "Return at once with 202 and the request record (Prefer: respond-async). Wins over --wait.")
    var async = false

    @Option(
        name: .long,
        help: ArgumentHelp(
            "Wait at most this many seconds, then return 202 with the request record and keep the request (Prefer: wait=N).",
            valueName: "seconds"))
    var wait: Double?

    @Option(
        name: .long,
        help: ArgumentHelp("A client name, to tell several tools of one user apart (Mdegate-Client).", valueName: "name"))
    var client: String?

    @OptionGroup var socket: SocketOption

    func validate() throws {
        if let wait, !(wait >= 0 && wait.isFinite) { throw ValidationError("--wait must be a number of seconds, 0 or more") }
    }

    var answer: Preference {
        if async { return .respondAsync }
        return wait.map { .wait(seconds: $0) } ?? .final
    }

    /// Sends `call` by its route's method, path and body, and prints the answer: exit 0 on a
    /// 2xx, 1 on any other answer, 3 when the gateway cannot be reached.
    func send(_ call: ActionCall) async throws {
        guard let route = Route.named(call.api) else { preconditionFailure("no route for the API \(call.api)") }
        let request = route.upstreamCall(for: call)
        let response = try await withGateway(socket.path) { gateway in
            try await gateway.send(request.method, request.path, body: request.body, answer: answer, client: client)
        }
        try printAnswer(response)
    }
}

/// The machine a machine action is about.
struct MachineArgument: ParsableArguments {
    @Argument(help: ArgumentHelp("The machine id (40 hex digits, as MDE shows it).", valueName: "machine-id"))
    var machineId: String

    func validate() throws {
        guard Identifier.isMachineID(machineId) else {
            throw ValidationError(
                "the machine id \(quoted(machineId)) is not 40 hex digits (such as \(Identifier.machineIDExample))")
        }
    }
}

/// `'value'`, shortened if long, for error messages that echo what was typed.
func quoted(_ value: String) -> String {
    "'\(value.count > 60 ? value.prefix(60) + "…" : value)'"
}

/// Checks a machine action id given on the command line.
func validateMachineActionID(_ id: String) throws {
    guard Identifier.isMachineActionID(id) else {
        throw ValidationError(
            "the machine action id \(quoted(id)) is not a GUID (such as \(Identifier.machineActionIDExample))")
    }
}

/// Values of a body member, in Microsoft's spelling; typed in any case on the command line.
protocol UpstreamValue: CaseIterable, RawRepresentable<String>, ExpressibleByArgument {}

extension UpstreamValue {
    init?(argument: String) {
        guard let value = Self.allCases.first(where: { $0.rawValue.lowercased() == argument.lowercased() }) else {
            return nil
        }
        self = value
    }
}

// MARK: Actions on a machine action

struct Cancel: ActionCommand {
    static let configuration = CommandConfiguration(
        abstract: "Cancel a machine action and print the JSON answer.",
        discussion: "POST /api/machineactions/{id}/cancel with {\"Comment\"}.")

    @Argument(help: ArgumentHelp("The machine action id (a GUID).", valueName: "action-id"))
    var id: String

    @Option(name: .long, help: "Why the action is cancelled (sent upstream as Comment).")
    var comment: String

    @OptionGroup var options: CallOptions

    func validate() throws { try validateMachineActionID(id) }

    var actionCall: ActionCall { .cancel(id, comment: comment) }
}

struct Action: ActionCommand {
    static let configuration = CommandConfiguration(
        abstract: "Read a machine action and print the JSON answer.",
        discussion: "GET /api/machineactions/{id} (the get_machine_action API, with its own quota).")

    @Argument(help: ArgumentHelp("The machine action id (a GUID).", valueName: "action-id"))
    var id: String

    @OptionGroup var options: CallOptions

    func validate() throws { try validateMachineActionID(id) }

    var actionCall: ActionCall { ActionCall(api: .getMachineAction, target: id) }
}

struct Actions: ActionCommand {
    static let configuration = CommandConfiguration(
        abstract: "List machine actions and print the JSON answer.",
        discussion: """
            GET /api/machineactions with the OData options $filter, $top and $skip (the \
            list_machine_actions API, with its own quota). Values are percent-encoded for you: \
            mdegate actions --filter "status eq 'Pending'" --top 10
            """)

    @Option(name: .long, help: ArgumentHelp("An OData filter ($filter), such as \"status eq 'Pending'\".", valueName: "expression"))
    var filter: String?

    @Option(name: .long, help: ArgumentHelp("Return at most this many actions ($top).", valueName: "n"))
    var top: Int?

    @Option(name: .long, help: ArgumentHelp("Skip this many actions first ($skip).", valueName: "n"))
    var skip: Int?

    @OptionGroup var options: CallOptions

    func validate() throws {
        if let filter, filter.isEmpty { throw ValidationError("--filter must not be empty") }
        if let top, top < 1 { throw ValidationError("--top must be 1 or more") }
        if let skip, skip < 0 { throw ValidationError("--skip must be 0 or more") }
    }

    var actionCall: ActionCall {
        var odata: [String: String] = [:]
        odata["$filter"] = filter
        odata["$top"] = top.map(String.init)
        odata["$skip"] = skip.map(String.init)
        return ActionCall(api: .listMachineActions, target: "", options: odata)
    }
}

// MARK: Actions on a machine

struct Isolate: ActionCommand {
    static let configuration = CommandConfiguration(
        abstract: "Isolate a machine from the network and print the JSON answer.",
        discussion: "POST /api/machines/{id}/isolate with {\"Comment\", \"IsolationType\"}.")

    enum IsolationType: String, UpstreamValue {
        case full = "Full", selective = "Selective", unManagedDevice = "UnManagedDevice"
    }

    @OptionGroup var machine: MachineArgument

    @Option(name: .long, help: "Why the machine is isolated (sent upstream as Comment).")
    var comment: String

    @Option(name: .long, help: "The isolation type (IsolationType).")
    var type: IsolationType = .full

    @OptionGroup var options: CallOptions

    var actionCall: ActionCall {
        ActionCall(api: .isolate, target: machine.machineId, comment: comment, options: ["IsolationType": type.rawValue])
    }
}

struct Unisolate: ActionCommand {
    static let configuration = CommandConfiguration(
        abstract: "Release a machine from isolation and print the JSON answer.",
        discussion: "POST /api/machines/{id}/unisolate with {\"Comment\"}.")

    @OptionGroup var machine: MachineArgument

    @Option(name: .long, help: "Why the machine is released (sent upstream as Comment).")
    var comment: String

    @OptionGroup var options: CallOptions

    var actionCall: ActionCall { ActionCall(api: .unisolate, target: machine.machineId, comment: comment) }
}

struct Scan: ActionCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run a Microsoft Defender Antivirus scan on a machine and print the JSON answer.",
        discussion: "POST /api/machines/{id}/runAntiVirusScan with {\"Comment\", \"ScanType\"}.")

    enum ScanType: String, UpstreamValue {
        case quick = "Quick", full = "Full"
    }

    @OptionGroup var machine: MachineArgument

    @Option(name: .long, help: "Why the machine is scanned (sent upstream as Comment).")
    var comment: String

    @Option(name: .long, help: "The scan type (ScanType).")
    var type: ScanType = .quick

    @OptionGroup var options: CallOptions

    var actionCall: ActionCall {
        ActionCall(api: .runAntivirusScan, target: machine.machineId, comment: comment, options: ["ScanType": type.rawValue])
    }
}

struct Collect: ActionCommand {
    static let configuration = CommandConfiguration(
        abstract: "Collect an investigation package from a machine and print the JSON answer.",
        discussion: "POST /api/machines/{id}/collectInvestigationPackage with {\"Comment\"}.")

    @OptionGroup var machine: MachineArgument

    @Option(name: .long, help: "Why the package is collected (sent upstream as Comment).")
    var comment: String

    @OptionGroup var options: CallOptions

    var actionCall: ActionCall {
        ActionCall(api: .collectInvestigationPackage, target: machine.machineId, comment: comment)
    }
}

struct Restrict: ActionCommand {
    static let configuration = CommandConfiguration(
        abstract: "Restrict a machine to Microsoft-signed code and print the JSON answer.",
        discussion: "POST /api/machines/{id}/restrictCodeExecution with {\"Comment\"}.")

    @OptionGroup var machine: MachineArgument

    @Option(name: .long, help: "Why code execution is restricted (sent upstream as Comment).")
    var comment: String

    @OptionGroup var options: CallOptions

    var actionCall: ActionCall { ActionCall(api: .restrictCodeExecution, target: machine.machineId, comment: comment) }
}

struct Unrestrict: ActionCommand {
    static let configuration = CommandConfiguration(
        abstract: "Lift a machine's code execution restriction and print the JSON answer.",
        discussion: "POST /api/machines/{id}/unrestrictCodeExecution with {\"Comment\"}.")

    @OptionGroup var machine: MachineArgument

    @Option(name: .long, help: "Why the restriction is lifted (sent upstream as Comment).")
    var comment: String

    @OptionGroup var options: CallOptions

    var actionCall: ActionCall { ActionCall(api: .unrestrictCodeExecution, target: machine.machineId, comment: comment) }
}

struct Quarantine: ActionCommand {
    static let configuration = CommandConfiguration(
        abstract: "Stop a file's processes on a machine, quarantine the file, and print the JSON answer.",
        discussion: "POST /api/machines/{id}/StopAndQuarantineFile with {\"Comment\", \"Sha1\"}.")

    @OptionGroup var machine: MachineArgument

    @Option(name: .long, help: ArgumentHelp("The file's SHA-1 (40 hex digits; Sha1).", valueName: "sha1"))
    var sha1: String

    @Option(name: .long, help: "Why the file is quarantined (sent upstream as Comment).")
    var comment: String

    @OptionGroup var options: CallOptions

    func validate() throws {
        guard Identifier.isSHA1(sha1) else { throw ValidationError("--sha1 \(quoted(sha1)) is not 40 hex digits") }
    }

    var actionCall: ActionCall {
        ActionCall(api: .stopAndQuarantineFile, target: machine.machineId, comment: comment, options: ["Sha1": sha1])
    }
}
