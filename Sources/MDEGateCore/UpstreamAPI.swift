/// One upstream API, as Microsoft counts it: each has its own quota (its own ledger), its own
/// 429 pause and its own queues. The name is what configuration, status and logs call it
/// (`cancel`, later `isolate`, `get_machine_action`, …).
///
/// The core does not know which APIs exist: the scheduler is given a ledger for each one the
/// gateway routes, and nothing in it is special to cancelling.
public struct UpstreamAPI: Hashable, Sendable, Comparable, CustomStringConvertible {
    public let name: String

    public init(_ name: String) {
        self.name = name
    }

    /// `POST /api/machineactions/{id}/cancel`.
    public static let cancel = UpstreamAPI("cancel")

    public var description: String { name }

    public static func < (lhs: UpstreamAPI, rhs: UpstreamAPI) -> Bool { lhs.name < rhs.name }
}
