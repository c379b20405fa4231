import MDEGateCore
import Testing

private let limits = [Limit(calls: 5, window: .seconds(1))]

private func millis(_ n: Int64) -> Timestamp { Timestamp(nanosecondsSinceEpoch: 1_700_000_000_000_000_000 + n * 1_000_000) }

@Suite("SharedLedger: slots the database decides, behind the scheduler's synchronous interface")
struct SharedLedgerTests {
    @Test("nothing is allowed without a grant; a grant is spent once; the next wake-up follows the database's answers")
    func grantsAndWaits() {
        var ledger = SharedLedger(limits: limits, guardBand: .milliseconds(100))
        let recorded1 = ledger.recordIfAllowed(at: millis(0))
        #expect(!recorded1, "no grant, no attempt")
        #expect(ledger.needsAsk(wanted: 1, at: millis(0)))
        ledger.startAsking()
        #expect(!ledger.needsAsk(wanted: 3, at: millis(0)), "one request at a time")
        #expect(ledger.earliestSlot(notBefore: millis(0)) == .distantFuture, "the answer wakes the gateway, not a timer")
        ledger.granted(attempt: 7, askedAt: millis(0), answeredAt: millis(0))
        #expect(ledger.earliestSlot(notBefore: millis(1)) == millis(1))
        #expect(ledger.needsAsk(wanted: 2, at: millis(1)), "one grant held, two attempts wanted")
        #expect(!ledger.needsAsk(wanted: 1, at: millis(1)))
        let recorded2 = ledger.recordIfAllowed(at: millis(2))
        #expect(recorded2)
        let recorded3 = ledger.recordIfAllowed(at: millis(2))
        #expect(!recorded3, "a grant is spent once")
        #expect(ledger.used(limits[0], at: millis(2)) == 1, "this host's own attempts")
        ledger.startAsking()
        ledger.wait(until: millis(500))
        #expect(ledger.earliestSlot(notBefore: millis(10)) == millis(500))
        #expect(!ledger.needsAsk(wanted: 1, at: millis(499)))
        #expect(ledger.needsAsk(wanted: 1, at: millis(500)))
        ledger.startAsking()
        ledger.unreachable(retryAt: millis(1500))
        #expect(ledger.earliestSlot(notBefore: millis(600)) == millis(1500), "no answer: ask again later, send nothing")
        let recorded4 = ledger.recordIfAllowed(at: millis(600))
        #expect(!recorded4)
    }

    @Test("a grant not spent within the guard band of its answer is dropped, never sent late")
    func staleGrant() {
        var ledger = SharedLedger(limits: limits, guardBand: .milliseconds(100))
        ledger.startAsking()
        ledger.granted(attempt: 1, askedAt: millis(-40), answeredAt: millis(0))
        #expect(ledger.freshGrants(at: millis(99)) == 1, "a slow answer does not shorten the grant's life")
        #expect(ledger.freshGrants(at: millis(100)) == 0)
        let recorded5 = ledger.recordIfAllowed(at: millis(100))
        #expect(!recorded5)
        #expect(ledger.needsAsk(wanted: 1, at: millis(100)), "a dropped grant is asked for again")
    }

    @Test("an attempt that leaves late after its grant was asked for is reported once, by how late")
    func lateAttempts() {
        var ledger = SharedLedger(limits: limits, guardBand: .milliseconds(100))
        ledger.startAsking()
        ledger.granted(attempt: 11, askedAt: millis(0), answeredAt: millis(0))
        ledger.startAsking()
        ledger.granted(attempt: 12, askedAt: millis(5), answeredAt: millis(5))
        let recorded6 = ledger.recordIfAllowed(at: millis(10))
        #expect(recorded6)
        let recorded7 = ledger.recordIfAllowed(at: millis(10))
        #expect(recorded7)
        ledger.restamp(millis(10), to: millis(20))  // 20 ms after it was asked for: within lateness (25 ms)
        ledger.restamp(millis(10), to: millis(70))  // 65 ms after: late
        let late = ledger.takeLateAttempts()
        #expect(late.map(\.attempt) == [12])
        #expect(late.first?.delay == .milliseconds(65))
        #expect(ledger.takeLateAttempts().isEmpty, "reported once")
    }

    @Test("in a scheduler: no wake-up while a slot is asked for, and the attempts that could start are counted")
    func inScheduler() {
        var scheduler = Scheduler(
            ledgers: [.cancel: SharedLedger(limits: limits, guardBand: .milliseconds(100))],
            retryPolicy: RetryPolicy(maxAttempts: 4, initialBackoff: .seconds(1), maxBackoff: .seconds(8)),
            maxConcurrency: 2, maxPending: 100)
        for n in 0..<3 { _ = scheduler.submit("r\(n)", api: .cancel, target: "t\(n)", client: ClientID(uid: 1, name: nil)) }
        #expect(scheduler.startableAttempts(.cancel, at: millis(0)) == 2, "capped by the concurrency")
        #expect(scheduler.nextDispatch(at: millis(0)) == nil)
        scheduler.updateLedger(.cancel, as: SharedLedger.self) { $0.startAsking() }
        #expect(scheduler.nextWakeup(after: millis(0)) == nil)
        scheduler.updateLedger(.cancel, as: SharedLedger.self) { $0.granted(attempt: 1, askedAt: millis(0), answeredAt: millis(0)) }
        #expect(scheduler.nextWakeup(after: millis(1)) == millis(1))
        #expect(scheduler.nextDispatch(at: millis(1))?.job == "r0")
        #expect(scheduler.nextDispatch(at: millis(1)) == nil, "one grant, one attempt")
        #expect(scheduler.startableAttempts(.cancel, at: millis(1)) == 1)
    }
}
