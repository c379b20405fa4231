import ArgumentParser

/// An upstream API the quota scenarios can call, and the request that calls it: each call gets a
/// target of its own (`number`), so nothing coalesces.
enum BenchAPI: String, CaseIterable, Sendable, ExpressibleByArgument {
    case cancel
    case getMachineAction = "get_machine_action"
    case listMachineActions = "list_machine_actions"
    case isolate
    case unisolate
    case runAntivirusScan = "run_antivirus_scan"
    case collectInvestigationPackage = "collect_investigation_package"
    case restrictCodeExecution = "restrict_code_execution"
    case unrestrictCodeExecution = "unrestrict_code_execution"
    case stopAndQuarantineFile = "stop_and_quarantine_file"

    /// Method, path and body of call `number` (the simulator answers GETs of actions it did not
    /// create with 404, which spends the quota all the same).
    func request(_ number: Int, tag: String) -> (method: String, path: String, body: [UInt8]) {
        let action = machineActionID(number, tag: tag)
        let hex = String(number, radix: 16)
        let machine = tag + String(repeating: "0", count: 32 - hex.count) + hex
        func post(_ name: String, _ members: String = "") -> (String, String, [UInt8]) {
            ("POST", "/api/machines/\(machine)/\(name)", Array(#"{"Comment":"mdegate-bench"\#(members)}"#.utf8))
        }
        switch self {
        case .cancel: return ("POST", "/api/machineactions/\(action)/cancel", cancelBody)
        case .getMachineAction: return ("GET", "/api/machineactions/\(action)", [])
        case .listMachineActions: return ("GET", "/api/machineactions?$top=1&$skip=\(number)", [])
        case .isolate: return post("isolate", #","IsolationType":"Full""#)
        case .unisolate: return post("unisolate")
        case .runAntivirusScan: return post("runAntiVirusScan", #","ScanType":"Quick""#)
        case .collectInvestigationPackage: return post("collectInvestigationPackage")
        case .restrictCodeExecution: return post("restrictCodeExecution")
        case .unrestrictCodeExecution: return post("unrestrictCodeExecution")
        case .stopAndQuarantineFile: return post("StopAndQuarantineFile", #","Sha1":"\#(machine)""#)
        }
    }
}
