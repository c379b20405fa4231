import MDEGateCore
import Testing

/// Seconds as a timestamp, for readable tests.
func at(_ seconds: Double) -> Timestamp { Timestamp(secondsSinceEpoch: seconds) }

@Suite("Ledger: the sliding-window quota rule")
struct LedgerTests {
    @Test("a token returns exactly one window after it was spent")
    func tokenReturnsAfterOneWindow() {
        var ledger = Ledger(limits: [Limit(calls: 2, window: .seconds(1))], guardBand: .zero)
        let allowed1 = ledger.recordIfAllowed(at: at(0)); #expect(allowed1)
        let allowed2 = ledger.recordIfAllowed(at: at(0.1)); #expect(allowed2)
        let allowed3 = ledger.recordIfAllowed(at: at(0.5)); #expect(!allowed3)
        #expect(ledger.earliestSlot(notBefore: at(0.5)) == at(1.0))
        let allowed4 = ledger.recordIfAllowed(at: Timestamp(nanosecondsSinceEpoch: 999_999_999)); #expect(!allowed4)
        let allowed5 = ledger.recordIfAllowed(at: at(1.0)); #expect(allowed5)
        #expect(ledger.earliestSlot(notBefore: at(1.0)) == at(1.1))
    }

    @Test("the guard band lengthens every window")
    func guardBandLengthensWindows() {
        var ledger = Ledger(limits: [Limit(calls: 1, window: .seconds(1))], guardBand: .milliseconds(250))
        let allowed6 = ledger.recordIfAllowed(at: at(10)); #expect(allowed6)
        #expect(ledger.earliestSlot(notBefore: at(10)) == at(11.25))
        let allowed7 = ledger.recordIfAllowed(at: at(11.2)); #expect(!allowed7)
        let allowed8 = ledger.recordIfAllowed(at: at(11.25)); #expect(allowed8)
    }

    @Test("every limit is checked, and the slot is the latest any of them allows")
    func allLimitsChecked() {
        var ledger = Ledger(
            limits: [Limit(calls: 2, window: .seconds(1)), Limit(calls: 3, window: .seconds(10))],
            guardBand: .zero)
        let allowed9 = ledger.recordIfAllowed(at: at(0)); #expect(allowed9)
        let allowed10 = ledger.recordIfAllowed(at: at(0)); #expect(allowed10)
        #expect(ledger.earliestSlot(notBefore: at(0)) == at(1))
        let allowed11 = ledger.recordIfAllowed(at: at(1)); #expect(allowed11)
        // The minute limit has room again at 2 s, but the 10 s limit is full until 10 s.
        #expect(ledger.earliestSlot(notBefore: at(2)) == at(10))
        #expect(ledger.used(Limit(calls: 3, window: .seconds(10)), at: at(2)) == 3)
        #expect(ledger.used(Limit(calls: 2, window: .seconds(1)), at: at(2)) == 0)
        #expect(ledger.nextFree(Limit(calls: 3, window: .seconds(10)), at: at(2)) == at(10))
        #expect(ledger.nextFree(Limit(calls: 2, window: .seconds(1)), at: at(2)) == nil)
    }

    @Test("a refused attempt charges no limit")
    func refusalChargesNothing() {
        var ledger = Ledger(
            limits: [Limit(calls: 1, window: .seconds(1)), Limit(calls: 5, window: .seconds(60))],
            guardBand: .zero)
        let allowed12 = ledger.recordIfAllowed(at: at(0)); #expect(allowed12)
        for step in 1...9 {
            let allowed = ledger.recordIfAllowed(at: at(Double(step) / 10))
            #expect(!allowed)
        }
        #expect(ledger.used(Limit(calls: 5, window: .seconds(60)), at: at(0.9)) == 1)
    }

    @Test("attempts restored out of order still count, and a clock stepping back keeps the log sorted")
    func restoredAttemptsCount() {
        var ledger = Ledger(
            limits: [Limit(calls: 3, window: .seconds(60))], guardBand: .zero,
            attempts: [at(30), at(10)])
        ledger.record(at: at(20))
        #expect(Array(ledger.attempts) == [at(10), at(20), at(30)])
        #expect(ledger.earliestSlot(notBefore: at(31)) == at(70))
    }

    @Test("projected slots follow the rule one after another")
    func projectedSlots() {
        let ledger = Ledger(limits: [Limit(calls: 2, window: .seconds(1))], guardBand: .zero)
        #expect(ledger.projectedSlots(count: 5, notBefore: at(0)) == [at(0), at(0), at(1), at(1), at(2)])
    }

    @Test("configuration forms of limits and durations", arguments: [
        ("100/1m", Limit(calls: 100, window: .seconds(60))),
        ("1500/1h", Limit(calls: 1500, window: .seconds(3600))),
        ("5/1s", Limit(calls: 5, window: .seconds(1))),
        ("12/250ms", Limit(calls: 12, window: .milliseconds(250))),
        ("3/1.5s", Limit(calls: 3, window: .milliseconds(1500))),
    ])
    func parsesLimits(spec: String, limit: Limit) {
        #expect(Limit(spec: spec) == limit)
        #expect(Limit(spec: limit.spec) == limit)
    }

    @Test("malformed limits are refused", arguments: ["", "100", "/1m", "0/1m", "-1/1m", "100/0s", "100/1x", "100/m", "a/1m", "1/1m/2"])
    func refusesBadLimits(spec: String) {
        #expect(Limit(spec: spec) == nil)
    }
}

@Suite("Ledger: attempts that leave late")
struct LedgerRestampTests {
    @Test("an attempt stored slowly counts from when it left, so the slot it frees opens later")
    func restampDelaysTheNextSlot() {
        var ledger = Ledger(limits: [Limit(calls: 1, window: .seconds(1))], guardBand: .milliseconds(30))
        let taken = ledger.recordIfAllowed(at: at(0))
        #expect(taken)
        ledger.restamp(at(0), to: at(0.05))
        #expect(ledger.earliestSlot(notBefore: at(0.5)) == at(1.08))
        #expect(ledger.used(Limit(calls: 1, window: .seconds(1)), at: at(1.05)) == 1)
        // Never earlier, and unknown attempts are left alone.
        ledger.restamp(at(0.05), to: at(0.01))
        ledger.restamp(at(7), to: at(8))
        #expect(Array(ledger.attempts) == [at(0.05)])
    }
}
