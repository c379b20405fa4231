import NIOHTTP1

/// One API of the simulated machine-action family: its name (the one `--api-limits`, `/_sim/faults`
/// and `/_sim/stats` use, the same as mdegate's), its route, what it takes and what it answers.
///
/// The simulator keeps its own copy of the route table rather than importing the daemon's: it
/// stands for Microsoft's side, and must not change because mdegate's table did.
struct SimulatedAPI: Sendable {
    /// What the `{id}` in the path is.
    enum Target: Sendable {
        /// A machine action id: a GUID.
        case machineAction
        /// A machine id: 40 hex digits.
        case machine
        /// No id (the listing).
        case none
    }

    /// A required body member besides `Comment`.
    struct Parameter: Sendable {
        var name: String
        /// The allowed values in Microsoft's spelling (accepted in any case, stored in this
        /// spelling); nil for a SHA-1 (40 hex digits).
        var allowed: [String]?
    }

    /// The API's name, e.g. `isolate`.
    let name: String
    let method: HTTPMethod
    /// The path below `/api/`, `{id}` standing for the target, e.g. `machines/{id}/isolate`.
    let template: String
    let target: Target
    let parameter: Parameter?
    /// For a POST on a machine: the `type` of the MachineAction it creates.
    let actionType: String?
    /// What a successful call answers.
    let success: HTTPResponseStatus

    /// The lowercased fixed segments, `nil` for the id.
    private let pattern: [String?]

    private init(
        _ name: String, _ method: HTTPMethod, _ template: String, _ target: Target,
        parameter: Parameter? = nil, actionType: String? = nil, success: HTTPResponseStatus
    ) {
        self.name = name
        self.method = method
        self.template = template
        self.target = target
        self.parameter = parameter
        self.actionType = actionType
        self.success = success
        self.pattern = template.split(separator: "/").map { $0 == "{id}" ? nil : $0.lowercased() }
    }

    /// A POST on a machine that creates a machine action (answered 201).
    private static func machineAction(
        _ name: String, _ segment: String, type: String, parameter: Parameter? = nil
    ) -> SimulatedAPI {
        SimulatedAPI(
            name, .POST, "machines/{id}/\(segment)", .machine, parameter: parameter, actionType: type, success: .created)
    }

    static let cancel = SimulatedAPI("cancel", .POST, "machineactions/{id}/cancel", .machineAction, success: .ok)
    static let getMachineAction = SimulatedAPI("get_machine_action", .GET, "machineactions/{id}", .machineAction, success: .ok)
    static let listMachineActions = SimulatedAPI("list_machine_actions", .GET, "machineactions", .none, success: .ok)

    /// Every API, cancel first; the order of `--help` and of nothing else (stats are keyed by name).
    static let all: [SimulatedAPI] = [
        .cancel,
        .getMachineAction,
        .listMachineActions,
        .machineAction(
            "isolate", "isolate", type: "Isolate",
            parameter: Parameter(name: "IsolationType", allowed: ["Full", "Selective", "UnManagedDevice"])),
        .machineAction("unisolate", "unisolate", type: "Unisolate"),
        .machineAction(
            "run_antivirus_scan", "runAntiVirusScan", type: "RunAntiVirusScan",
            parameter: Parameter(name: "ScanType", allowed: ["Quick", "Full"])),
        .machineAction("collect_investigation_package", "collectInvestigationPackage", type: "CollectInvestigationPackage"),
        .machineAction("restrict_code_execution", "restrictCodeExecution", type: "RestrictCodeExecution"),
        .machineAction("unrestrict_code_execution", "unrestrictCodeExecution", type: "UnrestrictCodeExecution"),
        .machineAction(
            "stop_and_quarantine_file", "StopAndQuarantineFile", type: "StopAndQuarantineFile",
            parameter: Parameter(name: "Sha1", allowed: nil)),
    ]

    static let names: [String] = all.map(\.name)
    private static let byName: [String: SimulatedAPI] = Dictionary(uniqueKeysWithValues: all.map { ($0.name, $0) })

    static func named(_ name: String) -> SimulatedAPI? { byName[name] }

    /// The API whose route `segments` (the path below `/api/`, as sent) is, and the id in it.
    /// Fixed segments compare case-insensitively, as ASP.NET's routing (which serves the MDE API)
    /// does; the method is not considered here (a wrong one is answered 405 by the caller).
    static func route(_ segments: [Substring]) -> (api: SimulatedAPI, id: String?)? {
        let lowered = segments.map { $0.lowercased() }
        for api in all where api.pattern.count == segments.count {
            var id: String?
            var matches = true
            for (index, fixed) in api.pattern.enumerated() {
                if let fixed {
                    if fixed != lowered[index] { matches = false; break }
                } else {
                    id = String(segments[index])
                }
            }
            if matches { return (api, id) }
        }
        return nil
    }

    /// The message for an unknown API name, listing the known ones.
    static func unknownNameMessage(_ name: String) -> String {
        "'\(name)' is not an API name; known: \(names.joined(separator: ", "))."
    }
}

/// Machine ids are 40 hexadecimal digits (a SHA-1), either case; so is a file's `Sha1`.
enum HexId {
    static func isValid(_ text: some StringProtocol, digits: Int = 40) -> Bool {
        text.utf8.count == digits && text.utf8.allSatisfy { byte in
            (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte)
                || (UInt8(ascii: "a")...UInt8(ascii: "f")).contains(byte | 0x20)
        }
    }
}
