/// Attempts per minute over the last hour, for one upstream API: what `mdegate status` draws.
///
/// Sixty buckets in a ring, each stamped with the minute (since the epoch, by the wall clock) it
/// counts, so a bucket left from an earlier hour reads as empty. Recording is an index and an
/// add; reading walks sixty buckets. Throttled attempts (429s) are counted apart as well: they
/// spent quota like any attempt, and the picture should show where they were.
public struct AttemptTimeline: Sendable, Equatable {
    public static let minutes = 60

    private var stamps = [Int64](repeating: -1, count: minutes)
    private var attempts = [Int](repeating: 0, count: minutes)
    private var throttled = [Int](repeating: 0, count: minutes)

    public init() {}

    /// The timeline of `times` (attempts loaded from the store at start-up).
    public init(attempts times: some Sequence<Timestamp>) {
        for time in times { record(at: time) }
    }

    /// One attempt at `time`.
    public mutating func record(at time: Timestamp) {
        if let index = slot(time) { attempts[index] += 1 }
    }

    /// One attempt answered 429, that left at `time` (it is counted by `record` too).
    public mutating func recordThrottled(at time: Timestamp) {
        if let index = slot(time) { throttled[index] += 1 }
    }

    /// The last sixty minutes up to `now`, oldest first: the start of the oldest minute, the
    /// attempts per minute and, among them, the throttled ones. The last minute is the one in
    /// progress.
    public func lastHour(at now: Timestamp) -> (start: Timestamp, attempts: [Int], throttled: [Int]) {
        let current = Self.minute(now)
        var counts: [Int] = []
        var throttledCounts: [Int] = []
        counts.reserveCapacity(Self.minutes)
        throttledCounts.reserveCapacity(Self.minutes)
        for minute in (current - Int64(Self.minutes) + 1)...current {
            let index = Int(((minute % Int64(Self.minutes)) + Int64(Self.minutes)) % Int64(Self.minutes))
            let live = stamps[index] == minute
            counts.append(live ? attempts[index] : 0)
            throttledCounts.append(live ? throttled[index] : 0)
        }
        let start = Timestamp(nanosecondsSinceEpoch: (current - Int64(Self.minutes) + 1) * 60_000_000_000)
        return (start, counts, throttledCounts)
    }

    /// The bucket of `time`'s minute, emptied first if it still held an older hour's minute; nil
    /// when it holds a newer one (the clock stepped back an hour or more): that attempt is not
    /// drawn.
    private mutating func slot(_ time: Timestamp) -> Int? {
        let minute = Self.minute(time)
        let index = Int(((minute % Int64(Self.minutes)) + Int64(Self.minutes)) % Int64(Self.minutes))
        if stamps[index] != minute {
            guard stamps[index] < minute else { return nil }
            stamps[index] = minute
            attempts[index] = 0
            throttled[index] = 0
        }
        return index
    }

    private static func minute(_ time: Timestamp) -> Int64 {
        let ns = time.nanosecondsSinceEpoch
        return ns >= 0 ? ns / 60_000_000_000 : (ns - 59_999_999_999) / 60_000_000_000
    }
}
