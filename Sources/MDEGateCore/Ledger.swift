import DequeModule

/// The record of upstream attempts, and the quota rule that decides when the next one may start.
///
/// This is a sliding-window log, not a refilling token bucket. A bucket of capacity N that refills
/// at N/W lets 2N calls through in some window of length W (a full bucket spent at once, then the
/// refill), and the upstream answers 429. Here each attempt's "token" comes back exactly one window
/// (plus the guard band) after it was spent, so no window of the upstream ever sees more than N.
///
/// The rule, for every limit `N/W`: an attempt may start at `t` only if fewer than N attempts
/// started in `(t - W - guard, t]`. The guard band absorbs clock skew and network jitter between
/// our clock and the upstream's: an attempt recorded here at `t` may arrive there a little later.
public struct Ledger: QuotaLedger {
    /// The limits in force; all of them are checked for every attempt.
    public private(set) var limits: [Limit]
    /// Extra length added to every window, so jitter never lets two windows' worth overlap upstream.
    public private(set) var guardBand: Duration
    /// Attempt start times, oldest first. Only what is still inside the longest window is kept.
    public private(set) var attempts: Deque<Timestamp>

    public init(limits: [Limit], guardBand: Duration, attempts: some Sequence<Timestamp> = []) {
        precondition(!limits.isEmpty, "a ledger needs at least one limit")
        self.limits = limits
        self.guardBand = guardBand
        self.attempts = Deque(attempts.sorted())
    }

    /// The longest window plus the guard band: how far back the rule looks. A ledger keeps no
    /// attempt older than that.
    public static func horizon(limits: [Limit], guardBand: Duration) -> Duration {
        (limits.map(\.window).max() ?? .zero) + guardBand
    }

    /// Changes the limits (a configuration reload). The attempts already made keep counting.
    ///
    /// A reload that lengthens the horizon (a longer window or guard band) must count attempts
    /// the ledger has already let go of: the caller passes them as `earlier` (the store keeps a
    /// day of attempts). Only those the ledger can have let go of are taken: older than every
    /// attempt it still holds, and older than its horizon before the reload. The ones it holds
    /// are its own, restamped to when they left (the store may still have them at the instant
    /// their slot was taken).
    public mutating func reconfigure(limits: [Limit], guardBand: Duration, earlier: [Timestamp] = []) {
        precondition(!limits.isEmpty, "a ledger needs at least one limit")
        let cutoff = attempts.last.map { $0 - horizon }
        let oldest = attempts.first
        self.limits = limits
        self.guardBand = guardBand
        let history = earlier.filter { time in
            (cutoff.map { time <= $0 } ?? true) && (oldest.map { time < $0 } ?? true)
        }.sorted()
        guard !history.isEmpty else { return }
        attempts.insert(contentsOf: history, at: 0)
        if let newest = attempts.last { forget(before: newest) }
    }

    /// The earliest instant at or after `now` at which one more attempt satisfies every limit.
    ///
    /// With attempts `a_0 ≤ … ≤ a_(k-1)` inside a limit's window, that limit allows a new one once
    /// `a_(k-N)` has left it, at `a_(k-N) + W + guard`; the answer is the latest of those instants.
    public func earliestSlot(notBefore now: Timestamp) -> Timestamp {
        var slot = now
        for limit in limits {
            let span = limit.window + guardBand
            let firstInside = indexOfFirstAttempt(after: now - span)
            let inside = attempts.count - firstInside
            if inside >= limit.calls {
                let leaving = attempts[firstInside + inside - limit.calls]
                slot = max(slot, leaving + span)
            }
        }
        return slot
    }

    /// Checks every limit and, only if all allow it, records an attempt at `now`: one step, so an
    /// attempt is never charged to some limits but not others.
    public mutating func recordIfAllowed(at now: Timestamp) -> Bool {
        guard earliestSlot(notBefore: now) <= now else { return false }
        record(at: now)
        return true
    }

    /// Records an attempt unconditionally: for attempts that happened anyway (recovered from a
    /// crash, or sent again by the network stack), which count whether or not they were allowed.
    public mutating func record(at time: Timestamp) {
        if let last = attempts.last, last > time {
            // The wall clock stepped back; keep the log sorted.
            let index = attempts.firstIndex { $0 > time } ?? attempts.endIndex
            attempts.insert(time, at: index)
        } else {
            attempts.append(time)
        }
        forget(before: time)
    }

    /// Moves an attempt recorded at `recorded` to the later instant it actually left at.
    ///
    /// An attempt is recorded when its slot is taken, then stored durably, then sent; if storing
    /// took longer than the guard band, the upstream would see it that much later than the ledger
    /// does, and the slot it frees one window on would open too early. Moving it later only ever
    /// delays later attempts; it never lowers a count.
    public mutating func restamp(_ recorded: Timestamp, to departed: Timestamp) {
        guard departed > recorded, let index = attempts.lastIndex(of: recorded) else { return }
        attempts.remove(at: index)
        record(at: departed)
    }

    /// How many attempts count against `limit` at `now`.
    public func used(_ limit: Limit, at now: Timestamp) -> Int {
        attempts.count - indexOfFirstAttempt(after: now - (limit.window + guardBand))
    }

    /// When `limit` alone frees its next slot, if it is full at `now`; nil when it has room.
    public func nextFree(_ limit: Limit, at now: Timestamp) -> Timestamp? {
        let span = limit.window + guardBand
        let firstInside = indexOfFirstAttempt(after: now - span)
        let inside = attempts.count - firstInside
        guard inside >= limit.calls else { return nil }
        return attempts[firstInside + inside - limit.calls] + span
    }

    /// The instants of the next `count` slots, if attempts were made at each as soon as allowed.
    /// Used to estimate when a queued request will be sent.
    public func projectedSlots(count: Int, notBefore now: Timestamp) -> [Timestamp] {
        var projection = self
        var slots: [Timestamp] = []
        slots.reserveCapacity(count)
        var time = now
        for _ in 0..<count {
            time = projection.earliestSlot(notBefore: time)
            projection.record(at: time)
            slots.append(time)
        }
        return slots
    }

    /// Drops attempts that no limit can see any more, relative to `now`.
    private mutating func forget(before now: Timestamp) {
        guard let longest = limits.map(\.window).max() else { return }
        let horizon = now - (longest + guardBand)
        while let first = attempts.first, first <= horizon, attempts.count > 0 {
            attempts.removeFirst()
        }
    }

    /// Binary search: the index of the first attempt strictly after `time`.
    private func indexOfFirstAttempt(after time: Timestamp) -> Int {
        var low = 0
        var high = attempts.count
        while low < high {
            let mid = (low + high) / 2
            if attempts[mid] <= time { low = mid + 1 } else { high = mid }
        }
        return low
    }
}
