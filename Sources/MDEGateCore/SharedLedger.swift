import DequeModule

/// A quota whose slots another party decides: the shared ledger in PostgreSQL, which several
/// hosts spend together (`shared_quota`).
///
/// The decision is asynchronous (a round trip), the scheduler's interface is not. This ledger
/// bridges the two by holding what the database already answered:
///
/// - a slot the database *granted* is an attempt already recorded there; `recordIfAllowed`
///   spends one, so the scheduler's rule ("dispatch only in the step that records") holds;
/// - after a *wait* answer, `askAfter` is when the earliest slot frees (the server's clock turned
///   into a duration, so the hosts' clocks never enter the count);
/// - while a request for a slot is on its way (`asking`), no slot is expected from here.
///
/// The gateway asks (`needsAsk`) whenever its lane has work and no grant, and feeds the answer
/// back (`granted`, `wait`, `unreachable`).
///
/// A granted attempt is recorded at the server's instant, but reaches the upstream only after
/// the answer came back, the attempt was stored and sent. Two rules keep that gap inside the
/// guard band, where it cannot cause a 429:
/// - a grant not spent within `grantLifetime` of its answer is dropped (the slot is wasted,
///   never overspent);
/// - an attempt that left more than `lateness` after its grant was asked for is reported by
///   `takeLateAttempts`, and the gateway moves it that much later in the database, long before
///   the slot it frees (a window on) is handed out.
/// The delay is reckoned from when the grant was asked for, which is before the server recorded
/// it: a gap measured that way is never shorter than the real one.
public struct SharedLedger: QuotaLedger {
    /// A slot the database granted: the attempt it recorded, when it was asked for (the server
    /// recorded the attempt after that instant, so a delay reckoned from it is never short), and
    /// when the answer came.
    struct Grant {
        let attempt: Int64
        let askedAt: Timestamp
        let answeredAt: Timestamp
    }

    public private(set) var limits: [Limit]
    public private(set) var guardBand: Duration
    /// This host's own attempts: what `used` and `projectedSlots` read. The shared count (every
    /// host) is the database's, and status asks it there.
    public private(set) var own: Ledger
    /// Grants not yet spent, oldest first.
    private var grants: Deque<Grant> = []
    /// Grants spent, by the instant the scheduler recorded their attempt, until it departs.
    private var spent: Deque<(recorded: Timestamp, grant: Grant)> = []
    /// Attempts that left late, for the gateway to move in the database.
    private var late: [(attempt: Int64, delay: Duration)] = []
    /// No slot before this instant, as the database last said (nil: ask as soon as work waits).
    public private(set) var askAfter: Timestamp?
    /// A request for a slot is on its way to the database.
    public private(set) var asking = false

    public init(limits: [Limit], guardBand: Duration, attempts: some Sequence<Timestamp> = []) {
        self.limits = limits
        self.guardBand = guardBand
        self.own = Ledger(limits: limits, guardBand: guardBand, attempts: attempts)
    }

    /// How long a grant stays usable after its answer came: the guard band. An attempt sent
    /// later than `lateness` is moved in the database anyway; this bounds the gap for the rare
    /// attempt whose move cannot be written (the database went away right then) to the round
    /// trip plus the guard band.
    public var grantLifetime: Duration { guardBand }

    /// An attempt that leaves more than this after its grant was asked for is moved in the
    /// database.
    public var lateness: Duration { guardBand / 4 }

    /// Grants that may still be spent at `now`.
    public func freshGrants(at now: Timestamp) -> Int {
        grants.reduce(0) { $0 + ($1.answeredAt > now - grantLifetime ? 1 : 0) }
    }

    /// Whether the gateway should ask the database for a slot now, given how many attempts
    /// this lane could start (`wanted`).
    public func needsAsk(wanted: Int, at now: Timestamp) -> Bool {
        guard wanted > freshGrants(at: now), !asking else { return false }
        return (askAfter ?? now) <= now
    }

    // MARK: The database's answers

    /// A request for a slot left.
    public mutating func startAsking() {
        asking = true
    }

    /// The database recorded `attempt` for this host, asked for at `askedAt`; the answer came
    /// at `answeredAt`.
    public mutating func granted(attempt: Int64, askedAt: Timestamp, answeredAt: Timestamp) {
        asking = false
        askAfter = nil
        grants.append(Grant(attempt: attempt, askedAt: askedAt, answeredAt: answeredAt))
    }

    /// Attempts that left more than `lateness` after their grant was asked for, and by how much;
    /// each is reported once.
    public mutating func takeLateAttempts() -> [(attempt: Int64, delay: Duration)] {
        defer { late = [] }
        return late
    }

    /// The database says the earliest slot frees at `until` (this host's clock).
    public mutating func wait(until: Timestamp) {
        asking = false
        askAfter = until
    }

    /// The database could not be asked: ask again at `retryAt`. Grants held stay (they are
    /// recorded there already); none is added.
    public mutating func unreachable(retryAt: Timestamp) {
        asking = false
        askAfter = retryAt
    }

    // MARK: QuotaLedger

    /// Now if a grant is held; otherwise when to ask again, or never while a request is on its
    /// way (its answer wakes the gateway).
    public func earliestSlot(notBefore now: Timestamp) -> Timestamp {
        if freshGrants(at: now) > 0 { return now }
        if asking { return .distantFuture }
        return max(now, askAfter ?? now)
    }

    /// Spends a fresh grant, if one is held; stale ones are dropped on the way.
    public mutating func recordIfAllowed(at now: Timestamp) -> Bool {
        while let first = grants.first, first.answeredAt <= now - grantLifetime { grants.removeFirst() }
        guard let grant = grants.popFirst() else { return false }
        own.record(at: now)
        // An attempt that never departs (its commit failed) is forgotten after a minute.
        while let first = spent.first, first.recorded < now - .seconds(60) { spent.removeFirst() }
        spent.append((now, grant))
        return true
    }

    public mutating func restamp(_ recorded: Timestamp, to departed: Timestamp) {
        own.restamp(recorded, to: departed)
        guard let index = spent.firstIndex(where: { $0.recorded == recorded }) else { return }
        let grant = spent.remove(at: index).grant
        let delay = departed - grant.askedAt
        if delay > lateness { late.append((grant.attempt, delay)) }
    }

    public mutating func reconfigure(limits: [Limit], guardBand: Duration, earlier: [Timestamp]) {
        self.limits = limits
        self.guardBand = guardBand
        own.reconfigure(limits: limits, guardBand: guardBand, earlier: earlier)
    }

    /// This host's attempts that count against `limit` (status shows every host's from the
    /// database beside it).
    public func used(_ limit: Limit, at now: Timestamp) -> Int {
        own.used(limit, at: now)
    }

    /// Not known here: other hosts' attempts decide it.
    public func nextFree(_ limit: Limit, at now: Timestamp) -> Timestamp? {
        nil
    }

    /// An estimate: from the next slot this host knows of, at the pace of the tightest limit
    /// (other hosts may take some of those slots).
    public func projectedSlots(count: Int, notBefore now: Timestamp) -> [Timestamp] {
        let start = freshGrants(at: now) > 0 ? now : max(now, askAfter ?? now)
        let pace = limits.map { Double(($0.window + guardBand).nanoseconds) / Double($0.calls) }.max() ?? 0
        return (0..<count).map { start + .nanoseconds(Int64(pace * Double($0))) }
    }
}

extension Timestamp {
    /// Later than any instant a clock reads: "not on its own".
    public static let distantFuture = Timestamp(nanosecondsSinceEpoch: .max)
}
