import Foundation
import MDEGateCore
import MDEGateWire

/// One route of the machine-action family: the local path (the same as Microsoft's), what it
/// takes, and the API whose quota it spends. `Route.all` is the one table every part reads:
/// the local API matches and validates with it, the gateway builds upstream calls with it, the
/// configuration names its APIs, and the scheduler gets one lane per entry.
public struct Route: Sendable {
    /// What the `{id}` in the path is.
    public enum Target: Sendable {
        /// A machine action id: a GUID.
        case machineAction
        /// A machine id: 40 hex digits.
        case machine
        /// No id (the listing).
        case none
    }

    /// A body member besides `Comment`, and the values it may take.
    public struct Parameter: Sendable {
        public let name: String
        /// The allowed values in Microsoft's spelling (compared case-insensitively); nil for a
        /// SHA-1 (40 hex digits).
        public let allowed: [String]?
    }

    public let api: UpstreamAPI
    /// The method, locally and upstream.
    public let method: String
    /// The path below `/api/`, in Microsoft's spelling, `{id}` standing for the target. It is
    /// what goes upstream; locally the fixed segments compare case-insensitively, as ASP.NET's
    /// routing (which serves the MDE API) does.
    public let template: String
    public let target: Target
    /// POST routes take `{"Comment": …}` plus these members, every one required.
    public let parameters: [Parameter]
    /// What the upstream answers on success (201 for the machine actions it creates).
    public let success: Int
    /// Whether concurrent identical calls become one upstream call (not the listing, whose
    /// answer depends on the moment it is made).
    public let coalesces: Bool

    /// `template`'s segments, split once.
    let segments: [Substring]

    /// Every route, cancel first.
    public static let all: [Route] = [
        Route(.cancel, "POST", "machineactions/{id}/cancel", .machineAction, success: 200),
        Route(.getMachineAction, "GET", "machineactions/{id}", .machineAction, success: 200),
        Route(.listMachineActions, "GET", "machineactions", .none, success: 200, coalesces: false),
        Route(
            .isolate, "POST", "machines/{id}/isolate", .machine,
            parameters: [Parameter(name: "IsolationType", allowed: ["Full", "Selective", "UnManagedDevice"])]),
        Route(.unisolate, "POST", "machines/{id}/unisolate", .machine),
        Route(
            .runAntivirusScan, "POST", "machines/{id}/runAntiVirusScan", .machine,
            parameters: [Parameter(name: "ScanType", allowed: ["Quick", "Full"])]),
        Route(.collectInvestigationPackage, "POST", "machines/{id}/collectInvestigationPackage", .machine),
        Route(.restrictCodeExecution, "POST", "machines/{id}/restrictCodeExecution", .machine),
        Route(.unrestrictCodeExecution, "POST", "machines/{id}/unrestrictCodeExecution", .machine),
        Route(
            .stopAndQuarantineFile, "POST", "machines/{id}/StopAndQuarantineFile", .machine,
            parameters: [Parameter(name: "Sha1", allowed: nil)]),
    ]

    /// Every API name, in the table's order.
    public static let apis: [UpstreamAPI] = all.map(\.api)

    private static let byAPI: [UpstreamAPI: Route] = Dictionary(uniqueKeysWithValues: all.map { ($0.api, $0) })

    public static func named(_ api: UpstreamAPI) -> Route? { byAPI[api] }

    private init(
        _ api: UpstreamAPI, _ method: String, _ template: String, _ target: Target,
        parameters: [Parameter] = [], success: Int = 201, coalesces: Bool = true
    ) {
        self.api = api
        self.method = method
        self.template = template
        self.segments = template.split(separator: "/")
        self.target = target
        self.parameters = parameters
        self.success = success
        self.coalesces = coalesces
    }

    // MARK: Upstream

    /// The call that goes upstream: the path in Microsoft's spelling with the (validated) target,
    /// the listing's options re-encoded, and for a POST the canonical body (`Comment` first is
    /// not needed: members are sorted, as every JSON this project writes).
    public func upstreamCall(for call: ActionCall) -> UpstreamCall {
        var path = "/api/" + template.replacingOccurrences(of: "{id}", with: call.target)
        if target == .none, !call.options.isEmpty {
            path += "?" + Self.listingOptions.compactMap { name in
                call.options[name].map { name + "=" + Self.percentEncoded($0) }
            }.joined(separator: "&")
        }
        guard method == "POST" else { return UpstreamCall(method: method, path: path, body: []) }
        var body = call.options
        body["Comment"] = call.comment ?? ""
        return UpstreamCall(method: method, path: path, body: JSON.encode(body))
    }

    /// The OData options the listing passes through, in the order they are sent.
    static let listingOptions = ["$filter", "$top", "$skip"]

    private static let unreserved = CharacterSet(
        charactersIn: "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~")

    static func percentEncoded(_ value: String) -> String {
        value.addingPercentEncoding(withAllowedCharacters: unreserved) ?? value
    }
}

extension UpstreamAPI {
    public static let getMachineAction = UpstreamAPI("get_machine_action")
    public static let listMachineActions = UpstreamAPI("list_machine_actions")
    public static let isolate = UpstreamAPI("isolate")
    public static let unisolate = UpstreamAPI("unisolate")
    public static let runAntivirusScan = UpstreamAPI("run_antivirus_scan")
    public static let collectInvestigationPackage = UpstreamAPI("collect_investigation_package")
    public static let restrictCodeExecution = UpstreamAPI("restrict_code_execution")
    public static let unrestrictCodeExecution = UpstreamAPI("unrestrict_code_execution")
    public static let stopAndQuarantineFile = UpstreamAPI("stop_and_quarantine_file")
}
