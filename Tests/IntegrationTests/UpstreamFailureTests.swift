import Foundation
import MDEGateTransport
import Testing

/// What the gateway does when the upstream fails, refuses or stays silent.
@Suite("Upstream failures: retries, 429 pause, no answer", .timeLimit(.minutes(HarnessTime.suiteMinutes)))
struct UpstreamFailureTests {
    @Test("5xx answers are retried, and every attempt is recorded (attempts == upstream arrivals)")
    func retriedUntilSuccess() async throws {
        try await withRig(simulator: ["--fail-first", "2"]) { rig in
            let id = machineActionID()
            let answer = try await rig.client.cancel(id)
            #expect(answer.status == 200, "\(answer.summary)")
            let record = try await rig.client.record(try #require(answer.requestID))
            #expect(record["state"]?.string == "done")
            #expect(record["attempts"]?.int == 3, "\(record)")
            let stats = try await rig.simulator.stats()
            #expect(stats.arrivals(for: id) == 3, "\(stats)")
            #expect(stats.answered(503) == 2)
            let status = try await rig.client.status()
            // The 4 s window of 12/4s still holds all three attempts.
            #expect(status["limits"]?[1]?["used"]?.int == 3, "retries spend quota: \(status)")
        }
    }

    @Test("when retry.max_attempts runs out, the last 5xx is passed through as it came and the request failed")
    func retriesExhausted() async throws {
        var options = GatewayOptions()
        options.maxAttempts = 3
        try await withRig(simulator: ["--fail-first", "10"], gateway: options) { rig in
            let id = machineActionID()
            let answer = try await rig.client.cancel(id)
            #expect(answer.status == 503, "\(answer.summary)")
            #expect(answer.errorCode == "ServiceUnavailable", "the upstream's body: \(answer.summary)")
            let record = try await rig.client.record(try #require(answer.requestID))
            #expect(record["state"]?.string == "failed")
            #expect(record["attempts"]?.int == 3, "\(record)")
            #expect(record["response"]?["status"]?.int == 503)
            #expect(try await rig.simulator.stats().arrivals(for: id) == 3)
        }
    }

    @Test("a 429 pauses the gateway until Retry-After, then the request is sent again without using up a retry")
    func pausedByTooManyRequests() async throws {
        var options = GatewayOptions()
        options.maxAttempts = 1  // a 429 must not count as the one allowed attempt
        // Alone: the test must see the 2 s pause while it lasts, and read the 4 s window before it
        // ends; twenty other daemons starting beside it held it off for longer than that.
        try await withRig(gateway: options, alone: true) { rig in
            try await rig.simulator.setFaults(["next429": ["count": 1, "retryAfter": 2]])
            let client = rig.client
            let simulator = rig.simulator
            let id = machineActionID()
            async let answer = client.cancel(id)

            _ = try await eventually("the upstream to answer 429", { try await simulator.stats() }) { $0.answered(429) == 1 }
            // The gateway reports the pause once it has taken the 429 in (a moment after the
            // simulator answered), and until the retry leaves 2 s later. The simulator's counts are
            // read first: if the gateway still reports the pause after that, they were read while
            // it lasted, however long a busy machine holds this test between the two reads.
            let (during, status) = try await eventually(
                "the gateway to report the pause", { (try await simulator.stats(), try await client.status()) }
            ) { $0.1["pausedUntil"]?.string != nil }
            #expect(during.arrivals(for: id) == 1, "no attempt while paused: \(status)")

            let final = try await answer
            #expect(final.status == 200, "\(final.summary)")
            let record = try await client.record(try #require(final.requestID))
            #expect(record["state"]?.string == "done")
            #expect(record["attempts"]?.int == 2, "\(record)")
            let stats = try await simulator.stats()
            #expect(stats.arrivals(for: id) == 2, "\(stats)")
            #expect(stats.answered(429) == 1)
            let after = try await client.status()
            // The 2 s pause outlasts the 1 s window of 5/1s; the 4 s window of 12/4s holds both attempts.
            #expect(after["limits"]?[1]?["used"]?.int == 2, "the 429 attempt is in the ledger too: \(after)")
            #expect(after["pausedUntil"]?.isNull == true, "\(after)")
        }
    }

    @Test("when the last attempt gets no answer, a synchronous caller gets 502 UpstreamUnavailable")
    func noAnswer() async throws {
        var options = GatewayOptions()
        options.maxAttempts = 2
        try await withRig(simulator: ["--drop-rate", "1"], gateway: options) { rig in
            let id = machineActionID()
            let answer = try await rig.client.cancel(id)
            #expect(answer.status == 502, "\(answer.summary)")
            #expect(answer.errorCode == "UpstreamUnavailable", "\(answer.summary)")
            #expect(try answer.json()["error"]?["message"]?.string?.isEmpty == false)
            let target = (try? answer.json())?["error"]?["target"]?.string
            let rid = try #require(answer.requestID ?? target)
            let record = try await rig.client.record(rid)
            #expect(record["state"]?.string == "failed")
            #expect(record["attempts"]?.int == 2, "\(record)")
            let stats = try await rig.simulator.stats()
            #expect(stats.arrivals(for: id) == 2, "one arrival per attempt, no silent resends: \(stats)")
            #expect(stats.dropped == 2)
        }
    }

    /// The instant `/v1/status` gives as `pausedUntil`.
    private static func date(_ iso: String?) throws -> Date {
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        return try #require(iso.flatMap(formatter.date(from:)), "pausedUntil \(String(describing: iso))")
    }

    @Test("Retry-After as an HTTP-date pauses until that date; the request is then sent again")
    func retryAfterDate() async throws {
        try await withRig { rig in
            try await rig.simulator.setFaults(["next429RetryAfterDate": ["count": 1, "retryAfter": 2]])
            let client = rig.client
            let id = machineActionID()
            async let answer = client.cancel(id)
            let status = try await eventually("the gateway to report the pause", { try await client.status() }) {
                $0["pausedUntil"]?.string != nil
            }
            let observed = Date()
            // The pause ends at the date the upstream named: a whole second, at least 2 s after
            // the 429 arrived there, and (rounded up) less than 3 s after it was answered, which
            // was before the test saw the pause.
            let pausedUntil = status["pausedUntil"]?.string
            #expect(pausedUntil?.hasSuffix(".000Z") == true, "\(status)")
            let until = try Self.date(pausedUntil)
            let throttled = try #require(try await rig.simulator.stats().arrivalTime(0))
            #expect(until >= throttled.addingTimeInterval(2), "paused until \(until), 429 at \(throttled)")
            #expect(until < observed.addingTimeInterval(3), "paused until \(until), seen at \(observed)")
            let final = try await answer
            #expect(final.status == 200, "\(final.summary)")
            #expect(try await rig.simulator.stats().arrivals(for: id) == 2)
        }
    }

    @Test("a 429 without Retry-After pauses for 60 seconds, keeping the request queued")
    func retryAfterMissing() async throws {
        try await withRig { rig in
            try await rig.simulator.setFaults(["next429WithoutRetryAfter": 1])
            let accepted = try await rig.client.cancel(machineActionID(), prefer: "respond-async")
            #expect(accepted.status == 202, "\(accepted.summary)")
            let status = try await eventually("the gateway to report the pause", { try await rig.client.status() }) {
                $0["pausedUntil"]?.string != nil
            }
            let observed = Date()
            // 60 s from when the gateway got the 429: after it arrived upstream, before the test
            // saw the pause. `pausedUntil` is written to the millisecond, hence the 1 ms either way.
            let until = try Self.date(status["pausedUntil"]?.string)
            let throttled = try #require(try await rig.simulator.stats().arrivalTime(0))
            #expect(until >= throttled.addingTimeInterval(60 - 0.001), "paused until \(until), 429 at \(throttled)")
            #expect(until <= observed.addingTimeInterval(60 + 0.001), "paused until \(until), seen at \(observed)")
            #expect(status["queue"]?["depth"]?.int == 1, "back in the queue: \(status)")
            #expect(try await rig.simulator.stats().arrivals == 1)
        }
    }
}
