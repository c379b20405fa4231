import MDEGateCore
import MDEGateWire

/// A filter of the audit listing (`GET /v1/requests`, `mdegate requests`): records newest first,
/// one page at a time. Every field narrows the listing; none set lists everything kept.
public struct RequestQuery: Sendable, Equatable {
    /// The `Mdegate-Client` name, exactly.
    public var clientName: String?
    public var uid: UInt32?
    /// Any of these states; empty: every state.
    public var states: [RequestState] = []
    public var api: UpstreamAPI?
    /// The id in the path (a machine action id or a machine id), compared case-insensitively.
    public var target: String?
    /// Created at or after.
    public var since: Timestamp?
    /// Created before.
    public var until: Timestamp?
    public var limit: Int = RequestQuery.defaultLimit
    /// Where the previous page ended.
    public var after: RequestCursor?

    public static let defaultLimit = 100
    public static let maxLimit = 1000

    public init() {}
}

/// Where a page of the listing ended: the last record's creation instant and its place in the
/// order records were first stored (the tie-break). Opaque to clients.
public struct RequestCursor: Sendable, Equatable, CustomStringConvertible {
    public var createdAt: Int64
    public var sequence: Int64

    public init(createdAt: Int64, sequence: Int64) {
        self.createdAt = createdAt
        self.sequence = sequence
    }

    public var description: String { "\(createdAt).\(sequence)" }

    public init?(_ text: String) {
        let parts = text.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 2, let createdAt = Int64(parts[0]), let sequence = Int64(parts[1]) else { return nil }
        self.init(createdAt: createdAt, sequence: sequence)
    }

    /// Whether a record at (`createdAt`, `sequence`) comes after this cursor, newest first.
    func precedes(createdAt other: Int64, sequence otherSequence: Int64) -> Bool {
        (other, otherSequence) < (createdAt, sequence)
    }
}

/// One page of the listing.
public struct RequestPage: Sendable {
    public var records: [RequestRecord]
    /// The next page's cursor; nil on the last page.
    public var next: RequestCursor?

    public init(records: [RequestRecord], next: RequestCursor?) {
        self.records = records
        self.next = next
    }
}

extension RequestQuery {
    /// Whether `record` passes every filter but the cursor.
    func matches(_ record: RequestRecord) -> Bool {
        if let clientName, record.client.name != clientName { return false }
        if let uid, record.client.uid != uid { return false }
        if !states.isEmpty, !states.contains(record.state) { return false }
        if let api, record.call.api != api { return false }
        if let target, record.call.target.lowercased() != target.lowercased() { return false }
        if let since, record.createdAt < since { return false }
        if let until, record.createdAt >= until { return false }
        return true
    }
}
