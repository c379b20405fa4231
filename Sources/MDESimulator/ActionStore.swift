import Foundation
import MDEGateCore
import NIOCore

/// A machine action the simulator created (isolate, scan, ...), as it remembers it.
///
/// Its status is not stored: it follows from the time since creation (`ActionStore.duration`),
/// computed whenever it is read, so no timer ever runs. A cancellation is stored and wins.
struct StoredAction: Sendable {
    struct Cancellation: Sendable {
        var requestor: String
        var comment: String
        var at: Timestamp
    }

    /// A lowercase GUID.
    var id: String
    var type: String
    /// IsolationType or ScanType, in Microsoft's spelling, where the action has one.
    var scope: String?
    var requestor: String
    var requestorComment: String
    /// Lowercase, as MDE writes machine ids.
    var machineId: String
    var computerDnsName: String
    /// The file of a StopAndQuarantineFile action, lowercase.
    var sha1: String?
    /// The wall clock at creation, for the body.
    var created: Timestamp
    /// The monotonic clock at creation, for the status.
    var createdUptime: NIODeadline
    var cancellation: Cancellation?
}

/// An action's state at one instant: the status and when it last changed.
struct ActionSnapshot: Sendable {
    /// Pending, InProgress, Succeeded or Cancelled.
    enum Status: String, Sendable {
        case pending = "Pending"
        case inProgress = "InProgress"
        case succeeded = "Succeeded"
        case cancelled = "Cancelled"

        /// Whether a cancel still applies (MDE: "not yet in final state").
        var isActive: Bool { self == .pending || self == .inProgress }
    }

    var action: StoredAction
    var status: Status
    var lastUpdate: Timestamp
}

/// The machine actions the simulator created, bounded in number (the oldest go first), with the
/// small state machine MDE's actions go through: Pending for the first half of `duration`,
/// InProgress for the second, then Succeeded; Cancelled from a successful cancel on.
///
/// Not thread-safe: it lives in the simulator's locked state.
struct ActionStore: Sendable {
    /// From creation to Succeeded.
    let duration: TimeAmount
    /// At most this many actions are kept; creating one more forgets the oldest.
    let capacity: Int

    private var actions: [String: StoredAction] = [:]
    /// Ids in creation order; entries before `oldest` are gone.
    private var order: [String] = []
    private var oldest = 0
    /// The newest action per machine and kind (type, plus the file for a quarantine): the only
    /// one that can still be active, since a new one is created only when the previous is not.
    private var newestByKind: [String: String] = [:]

    init(duration: TimeAmount, capacity: Int) {
        self.duration = duration
        self.capacity = max(1, capacity)
    }

    var count: Int { actions.count }

    /// The action's status and last update at `now`.
    func snapshot(of action: StoredAction, at now: NIODeadline) -> ActionSnapshot {
        if let cancellation = action.cancellation {
            return ActionSnapshot(action: action, status: .cancelled, lastUpdate: cancellation.at)
        }
        let elapsed = now - action.createdUptime
        let half = TimeAmount.nanoseconds(duration.nanoseconds / 2)
        let (status, offset): (ActionSnapshot.Status, TimeAmount) =
            elapsed >= duration ? (.succeeded, duration) : elapsed >= half ? (.inProgress, half) : (.pending, .zero)
        return ActionSnapshot(
            action: action, status: status, lastUpdate: action.created + .nanoseconds(offset.nanoseconds))
    }

    func find(_ id: String, at now: NIODeadline) -> ActionSnapshot? {
        actions[id.lowercased()].map { snapshot(of: $0, at: now) }
    }

    /// The action of this kind on this machine that is still Pending or InProgress, if any.
    func active(like action: StoredAction, at now: NIODeadline) -> ActionSnapshot? {
        guard let id = newestByKind[Self.kind(of: action)], let newest = actions[id] else { return nil }
        let snapshot = snapshot(of: newest, at: now)
        return snapshot.status.isActive ? snapshot : nil
    }

    /// Stores a new action (the caller checked `active(like:at:)`), forgetting the oldest past
    /// `capacity`.
    mutating func insert(_ action: StoredAction) {
        actions[action.id] = action
        order.append(action.id)
        newestByKind[Self.kind(of: action)] = action.id
        while actions.count > capacity, oldest < order.count {
            let id = order[oldest]
            oldest += 1
            if let evicted = actions.removeValue(forKey: id), newestByKind[Self.kind(of: evicted)] == id {
                newestByKind[Self.kind(of: evicted)] = nil
            }
        }
        if oldest > 4096, oldest * 2 > order.count {
            order.removeFirst(oldest)
            oldest = 0
        }
    }

    enum CancelOutcome: Sendable {
        /// Never created here (or forgotten).
        case unknown
        /// Already Succeeded or Cancelled.
        case final(ActionSnapshot)
        case cancelled(ActionSnapshot)
    }

    mutating func cancel(_ id: String, requestor: String, comment: String, now: NIODeadline, wallClock: Timestamp) -> CancelOutcome {
        let key = id.lowercased()
        guard var action = actions[key] else { return .unknown }
        let current = snapshot(of: action, at: now)
        guard current.status.isActive else { return .final(current) }
        action.cancellation = .init(requestor: requestor, comment: comment, at: wallClock)
        actions[key] = action
        return .cancelled(snapshot(of: action, at: now))
    }

    /// The actions `query` selects at `now`, newest first, after `$skip`, at most `$top`.
    func list(_ query: ListingQuery, at now: NIODeadline) -> [ActionSnapshot] {
        var selected: [ActionSnapshot] = []
        var skipped = 0
        var index = order.count
        while index > oldest, selected.count < query.top {
            index -= 1
            guard let action = actions[order[index]] else { continue }
            let snapshot = snapshot(of: action, at: now)
            guard query.matches(snapshot) else { continue }
            if skipped < query.skip {
                skipped += 1
            } else {
                selected.append(snapshot)
            }
        }
        return selected
    }

    mutating func removeAll() {
        actions.removeAll()
        order.removeAll()
        oldest = 0
        newestByKind.removeAll()
    }

    private static func kind(of action: StoredAction) -> String {
        "\(action.machineId)|\(action.type)|\(action.sha1 ?? "")"
    }
}

/// The OData options of `GET /api/machineactions`: `$filter` (clauses `status eq '…'`,
/// `machineId eq '…'`, `type eq '…'` joined with `and`), `$top` (default and maximum 10,000, as
/// MDE documents) and `$skip`. Property names and values compare case-insensitively.
struct ListingQuery: Sendable, Equatable {
    enum Property: String, Sendable, CaseIterable {
        case status, machineId, type
    }

    struct Clause: Sendable, Equatable {
        var property: Property
        var value: String
    }

    static let maximumTop = 10_000

    var clauses: [Clause] = []
    var top = maximumTop
    var skip = 0

    func matches(_ snapshot: ActionSnapshot) -> Bool {
        clauses.allSatisfy { clause in
            let actual: String
            switch clause.property {
            case .status: actual = snapshot.status.rawValue
            case .machineId: actual = snapshot.action.machineId
            case .type: actual = snapshot.action.type
            }
            return actual.lowercased() == clause.value.lowercased()
        }
    }

    /// Parses a query string (`$filter=…&$top=…`, percent-encoded, `+` for a space). Unknown
    /// `$` options are refused; other parameters are ignored, as ASP.NET does.
    static func parse(_ queryString: String) -> Result<ListingQuery, BodyError> {
        var query = ListingQuery()
        var seen: Set<String> = []
        for pair in queryString.split(separator: "&") {
            let parts = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            let name = decoded(parts[0])
            let value = parts.count > 1 ? decoded(parts[1]) : ""
            guard name.hasPrefix("$") else { continue }
            guard seen.insert(name).inserted else { return .failure(BodyError("The query option \(name) is given twice.")) }
            switch name {
            case "$filter":
                switch parseFilter(value) {
                case .success(let clauses): query.clauses = clauses
                case .failure(let error): return .failure(error)
                }
            case "$top":
                guard let top = Int(value), (0...maximumTop).contains(top) else {
                    return .failure(BodyError("$top must be a whole number from 0 to \(maximumTop), got '\(value)'."))
                }
                query.top = top
            case "$skip":
                guard let skip = Int(value), skip >= 0 else {
                    return .failure(BodyError("$skip must be a whole number, 0 or more, got '\(value)'."))
                }
                query.skip = skip
            default:
                return .failure(BodyError("The query option \(name) is not supported here; use $filter, $top and $skip."))
            }
        }
        return .success(query)
    }

    private static func decoded(_ part: Substring) -> String {
        let spaced = part.replacingOccurrences(of: "+", with: " ")
        return spaced.removingPercentEncoding ?? spaced
    }

    /// `clause (and clause)*`, a clause being `property eq 'value'` (`''` is a quote inside it).
    static func parseFilter(_ text: String) -> Result<[Clause], BodyError> {
        let supported = "$filter supports only status, machineId and type compared with eq to a quoted string, joined with and"
        var scanner = Scanner(Array(text.unicodeScalars))
        var clauses: [Clause] = []
        repeat {
            scanner.skipSpaces()
            let name = scanner.word()
            guard let property = Property.allCases.first(where: { $0.rawValue.lowercased() == name.lowercased() }) else {
                return .failure(BodyError("Invalid $filter '\(text)': \(name.isEmpty ? "a property is expected" : "unknown property '\(name)'"); \(supported)."))
            }
            scanner.skipSpaces()
            guard scanner.word() == "eq" else {
                return .failure(BodyError("Invalid $filter '\(text)': 'eq' expected after \(name); \(supported)."))
            }
            scanner.skipSpaces()
            guard let value = scanner.quoted() else {
                return .failure(BodyError("Invalid $filter '\(text)': a value in single quotes expected after '\(name) eq'; \(supported)."))
            }
            clauses.append(Clause(property: property, value: value))
            scanner.skipSpaces()
            if scanner.atEnd { return .success(clauses) }
            guard scanner.word() == "and" else {
                return .failure(BodyError("Invalid $filter '\(text)': 'and' or the end expected after '\(name) eq '\(value)''; \(supported)."))
            }
        } while true
    }

    private struct Scanner {
        var scalars: [Unicode.Scalar]
        var position = 0

        init(_ scalars: [Unicode.Scalar]) { self.scalars = scalars }

        var atEnd: Bool { position >= scalars.count }

        mutating func skipSpaces() {
            while !atEnd, scalars[position] == " " { position += 1 }
        }

        /// Letters only.
        mutating func word() -> String {
            var word = ""
            while !atEnd, scalars[position].properties.isAlphabetic, scalars[position].isASCII {
                word.unicodeScalars.append(scalars[position])
                position += 1
            }
            return word
        }

        /// `'…'` with `''` for a quote; nil without a closing quote.
        mutating func quoted() -> String? {
            guard !atEnd, scalars[position] == "'" else { return nil }
            position += 1
            var value = ""
            while !atEnd {
                let scalar = scalars[position]
                position += 1
                if scalar == "'" {
                    if !atEnd, scalars[position] == "'" {
                        value.unicodeScalars.append("'")
                        position += 1
                    } else {
                        return value
                    }
                } else {
                    value.unicodeScalars.append(scalar)
                }
            }
            return nil
        }
    }
}
