/// What the scheduler asks of a quota: may an attempt start now, and when can the next one.
///
/// `Ledger` answers from its own log of attempts (one host, one state file). A ledger shared by
/// several hosts takes its slot decisions from elsewhere, asynchronously; it can still sit behind
/// this synchronous interface by holding the slots already granted to it (`recordIfAllowed` spends
/// one) and the instant it was told the next one frees (`earliestSlot`), while the gateway asks for
/// more in the background. Either way the scheduler's rule does not change: an attempt is
/// dispatched only in the same step that the ledger records it.
public protocol QuotaLedger: Sendable {
    /// The limits in force; every one of them is checked for every attempt.
    var limits: [Limit] { get }
    /// Extra length added to every window (see `Ledger`).
    var guardBand: Duration { get }

    /// The earliest instant at or after `now` at which one more attempt satisfies every limit.
    func earliestSlot(notBefore now: Timestamp) -> Timestamp
    /// Records an attempt at `now` if, and only if, every limit allows it.
    mutating func recordIfAllowed(at now: Timestamp) -> Bool
    /// Moves an attempt recorded at `recorded` to the later instant it actually left at.
    mutating func restamp(_ recorded: Timestamp, to departed: Timestamp)
    /// Applies reloaded limits. `earlier`: attempts the ledger may have let go of, for a reload
    /// that lengthens its horizon.
    mutating func reconfigure(limits: [Limit], guardBand: Duration, earlier: [Timestamp])

    /// How many attempts count against `limit` at `now`.
    func used(_ limit: Limit, at now: Timestamp) -> Int
    /// When `limit` alone frees its next slot, if it is full at `now`; nil when it has room.
    func nextFree(_ limit: Limit, at now: Timestamp) -> Timestamp?
    /// The instants of the next `count` slots if each were taken as soon as allowed.
    func projectedSlots(count: Int, notBefore now: Timestamp) -> [Timestamp]
}

extension QuotaLedger {
    /// How far back the rule looks: the longest window plus the guard band.
    public var horizon: Duration { Ledger.horizon(limits: limits, guardBand: guardBand) }
}
