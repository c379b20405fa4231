import MDEGateCore
import MDEGateWire
import Testing

@Suite("Timestamps in JSON")
struct JSONTimestampTests {
    @Test("milliseconds are written from the integer: a whole second stays whole, and parsing gives the instant back")
    func exactMilliseconds() {
        // 2026-12-03T05:28:58Z: as Double seconds this instant formatted as …57.999Z before.
        let whole = Timestamp(nanosecondsSinceEpoch: 1_796_275_738_000_000_000)
        #expect(JSON.timestamp(whole) == "2026-12-03T05:28:58.000Z")
        #expect(JSON.timestamp(whole - .nanoseconds(1)) == "2026-12-03T05:28:57.999Z")
        #expect(JSON.timestamp(whole + .milliseconds(7)) == "2026-12-03T05:28:58.007Z")
        #expect(JSON.timestamp(whole + .milliseconds(123) + .microseconds(999)) == "2026-12-03T05:28:58.123Z")
        #expect(JSON.timestamp(Timestamp(nanosecondsSinceEpoch: 0)) == "1970-01-01T00:00:00.000Z")
        #expect(JSON.timestamp(parsing: JSON.timestamp(whole + .milliseconds(42))) == whole + .milliseconds(42))
        for second in stride(from: Int64(1_796_275_700), to: 1_796_275_800, by: 1) {
            let instant = Timestamp(nanosecondsSinceEpoch: second * 1_000_000_000)
            #expect(JSON.timestamp(instant).hasSuffix(".000Z"), "\(second)")
        }
    }

    @Test("an instant a Timestamp cannot hold is not parsed (nil), where it used to overflow and stop the daemon")
    func instantsOutOfRange() {
        for text in ["0054-03-15T19:25:29.6114Z", "0001-01-01T00:00:00Z", "1677-09-21T00:00:00Z", "2262-04-12T00:00:00Z", "9999-12-31T23:59:59Z"] {
            #expect(JSON.timestamp(parsing: text) == nil, "\(text)")
        }
        #expect(JSON.timestamp(parsing: "1677-09-22T00:00:00Z") != nil)
        #expect(JSON.timestamp(parsing: "2262-04-11T00:00:00Z") != nil)
    }
}
