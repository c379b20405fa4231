import MDEGateCore
import MDEGateWire

/// One validated call of the machine-action family, as a client asked for it: the API, what it
/// is about, and its parameters. It is what a request record keeps, what coalescing compares,
/// and what becomes an `UpstreamCall` when an attempt leaves (`Route.upstreamCall(for:)`).
public struct ActionCall: Sendable, Equatable {
    public var api: UpstreamAPI
    /// The id in the path: a machine action id (a GUID) or a machine id (40 hex digits); empty
    /// for the listing.
    public var target: String
    /// The body's `Comment` on the POST routes; nil on the GET routes.
    public var comment: String?
    /// The other parameters by name: body members (`IsolationType`, `ScanType`, `Sha1`) in their
    /// canonical spelling, or the listing's OData options (`$filter`, `$top`, `$skip`). Empty for
    /// most calls, and then free: an empty dictionary allocates nothing.
    public var options: [String: String]

    public init(api: UpstreamAPI, target: String, comment: String? = nil, options: [String: String] = [:]) {
        self.api = api
        self.target = target
        self.comment = comment
        self.options = options
    }

    /// A cancel of `machineActionID` (a GUID, already validated).
    public static func cancel(_ machineActionID: String, comment: String) -> ActionCall {
        ActionCall(api: .cancel, target: machineActionID, comment: comment)
    }

    /// What makes two requests one upstream call (compared case-insensitively by the scheduler):
    /// the target and the parameters, never the comment (the first request's is sent). Nil for a
    /// call that never coalesces (the listing: its answer depends on when it is made).
    var coalescingKey: String? {
        guard Route.named(api)?.coalesces ?? true else { return nil }
        guard !options.isEmpty else { return target }
        return options.sorted { $0.key < $1.key }.reduce(target) { $0 + "|" + $1.key + "=" + $1.value }
    }
}
