import MDEGateCore
import Testing

@Suite("The last hour's attempts per minute")
struct AttemptTimelineTests {
    static func at(minute: Int64, second: Int64 = 0) -> Timestamp {
        Timestamp(nanosecondsSinceEpoch: (1_000_000 * 60 + minute * 60 + second) * 1_000_000_000)
    }

    @Test("attempts land in their minute; the last minute is the one in progress")
    func buckets() {
        var timeline = AttemptTimeline()
        timeline.record(at: Self.at(minute: 0, second: 1))
        timeline.record(at: Self.at(minute: 0, second: 59))
        timeline.record(at: Self.at(minute: 5, second: 30))
        timeline.recordThrottled(at: Self.at(minute: 5, second: 30))
        let hour = timeline.lastHour(at: Self.at(minute: 5, second: 31))
        #expect(hour.attempts.count == 60)
        #expect(hour.attempts.last == 1)
        #expect(hour.throttled.last == 1)
        #expect(hour.attempts[54] == 2, "minute 0 is five before the current one")
        #expect(hour.attempts.reduce(0, +) == 3)
        #expect(hour.start == Self.at(minute: -54))
    }

    @Test("minutes older than an hour are gone, also when their bucket is reused")
    func expiry() {
        var timeline = AttemptTimeline(attempts: [Self.at(minute: 0), Self.at(minute: 1)])
        #expect(timeline.lastHour(at: Self.at(minute: 59)).attempts.reduce(0, +) == 2)
        #expect(timeline.lastHour(at: Self.at(minute: 60)).attempts.reduce(0, +) == 1, "minute 0 left the hour")
        timeline.record(at: Self.at(minute: 61))
        let hour = timeline.lastHour(at: Self.at(minute: 61))
        #expect(hour.attempts.reduce(0, +) == 1, "minute 1's bucket now counts minute 61 only")
        #expect(hour.attempts.last == 1)
    }

    @Test("an attempt from a minute older than its bucket's (a clock stepped back) is not drawn over a newer one")
    func clockSteppedBack() {
        var timeline = AttemptTimeline()
        timeline.record(at: Self.at(minute: 70))
        timeline.record(at: Self.at(minute: 10))
        #expect(timeline.lastHour(at: Self.at(minute: 70)).attempts.reduce(0, +) == 1)
    }
}
