import Foundation
import MDEGateTransport
import Testing

/// The quota promise and the scheduling between tools, judged by a strict upstream.
@Suite("Scheduling: exact quota, fairness, coalescing, bounded queue", .timeLimit(.minutes(HarnessTime.suiteMinutes)))
struct SchedulingTests {
    @Test("a burst of 36 distinct cancels under 5/1s + 12/4s all succeed with zero violations upstream")
    func saturatingBurst() async throws {
        var options = GatewayOptions()
        options.guardBand = GatewayOptions.strictUpstreamGuard
        try await withRig(
            simulator: ["--limit", "5/1s", "--limit", "12/4s", "--retry-after", "1"],
            gateway: options,
            alone: true
        ) { rig in
            let ids = (0..<36).map { _ in machineActionID() }
            let answers = try await withThrowingTaskGroup(of: (String, TransportResponse).self) { group in
                for id in ids {
                    group.addTask { (id, try await rig.withSeparateClient { try await $0.cancel(id, client: "burst") }) }
                }
                var answers: [String: TransportResponse] = [:]
                for try await (id, answer) in group { answers[id] = answer }
                return answers
            }
            #expect(answers.count == 36)
            for (id, answer) in answers {
                #expect(answer.status == 200, "\(id): \(answer.summary)")
            }
            let stats = try await rig.simulator.stats()
            #expect(stats.violations == 0, "the upstream saw the quota exceeded: \(stats)")
            #expect(stats.answered(429) == 0, "\(stats)")
            #expect(stats.arrivals == 36, "one attempt per request: \(stats)")
            let status = try await rig.client.status()
            #expect(status["pausedUntil"]?.isNull == true, "\(status)")
        }
    }

    @Test("against a slow upstream (300 ms per answer) a burst under 5/1s still has zero violations")
    func burstAgainstSlowUpstream() async throws {
        var options = GatewayOptions()
        options.limits = ["5/1s"]
        options.guardBand = GatewayOptions.strictUpstreamGuard
        try await withRig(
            simulator: ["--limit", "5/1s", "--retry-after", "1", "--delay", "300ms"],
            gateway: options,
            alone: true
        ) { rig in
            let answers = try await withThrowingTaskGroup(of: TransportResponse.self) { group in
                for _ in 0..<12 {
                    group.addTask { try await rig.withSeparateClient { try await $0.cancel(machineActionID()) } }
                }
                return try await group.reduce(into: []) { $0.append($1) }
            }
            for answer in answers {
                #expect(answer.status == 200, "\(answer.summary)")
            }
            let stats = try await rig.simulator.stats()
            #expect(stats.violations == 0, "an attempt reached the upstream later than the ledger says it started: \(stats)")
            #expect(stats.arrivals == 12, "\(stats)")
        }
    }

    @Test("a tool that floods the queue does not starve one that sends three")
    func roundRobinBetweenClients() async throws {
        var options = GatewayOptions()
        options.limits = ["5/1s"]
        try await withRig(gateway: options) { rig in
            let client = rig.client
            var flood: [String] = []
            for _ in 0..<40 {
                let accepted = try await client.cancel(machineActionID(), client: "flood", prefer: "respond-async")
                #expect(accepted.status == 202, "\(accepted.summary)")
                flood.append(try #require(try accepted.json()["id"]?.string))
            }

            let small = try await withThrowingTaskGroup(of: TransportResponse.self) { group in
                for _ in 0..<3 {
                    group.addTask {
                        try await rig.withSeparateClient { try await $0.cancel(machineActionID(), client: "small") }
                    }
                }
                return try await group.reduce(into: []) { $0.append($1) }
            }
            var smallRecords: [JSON] = []
            for answer in small {
                #expect(answer.status == 200, "\(answer.summary)")
                smallRecords.append(try await client.record(try #require(answer.requestID)))
            }

            // Judged by order, not by how fast this machine is: from the moment the small tool's
            // last request was admitted until its last answer, round-robin lets at most one flood
            // request go per small one (plus one already leaving); first come, first served would
            // have sent every flood request still waiting first.
            let smallAdmitted = try #require(smallRecords.compactMap { Self.instant($0["createdAt"]) }.max())
            let smallDone = try #require(smallRecords.compactMap { Self.instant($0["completedAt"]) }.max())
            var floodBetween = 0
            var floodAfter = 0
            for rid in flood {
                let record = try await client.record(rid)
                guard let done = Self.instant(record["completedAt"]) else {
                    floodAfter += 1
                    continue
                }
                if done > smallAdmitted && done <= smallDone { floodBetween += 1 }
                if done > smallDone { floodAfter += 1 }
            }
            #expect(floodAfter > 0, "the flood drained before the small tool's answers: \(floodBetween) of it went in between")
            #expect(floodBetween <= 4, "\(floodBetween) flood requests were sent while the small tool's 3 waited")
            for rid in flood { _ = try await client.http.send("DELETE", "/v1/requests/\(rid)") }
        }
    }

    /// A record's ISO 8601 time (`createdAt`, `completedAt`); nil for null.
    private static func instant(_ value: JSON?) -> Date? {
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        return value?.string.flatMap(formatter.date(from:))
    }

    @Test("two concurrent cancels of one machine action (in different case) make one upstream call and get the same answer")
    func coalescing() async throws {
        try await withRig(simulator: ["--delay", "3s"]) { rig in
            let client = rig.client
            let id = machineActionID()
            let simulator = rig.simulator
            async let first = rig.withSeparateClient { try await $0.cancel(id, comment: "first", client: "tool-a") }
            _ = try await eventually("the first cancel to reach the upstream", { try await simulator.stats() }) { $0.arrivals == 1 }
            let second = try await rig.withSeparateClient { try await $0.cancel(id.uppercased(), comment: "second", client: "tool-b") }
            let firstAnswer = try await first

            #expect(firstAnswer.status == 200, "\(firstAnswer.summary)")
            #expect(second.status == 200, "\(second.summary)")
            #expect(second.text == firstAnswer.text, "every waiter gets the same answer")
            #expect(try firstAnswer.json()["cancellationComment"]?.string == "first", "the first request's comment is sent")
            #expect(second.header("Mdegate-Coalesced") == "true")
            #expect(firstAnswer.header("Mdegate-Coalesced") == nil)

            let stats = try await rig.simulator.stats()
            #expect(stats.arrivals(for: id) == 1, "\(stats)")
            #expect(stats.arrivals == 1)

            let firstRID = try #require(firstAnswer.requestID)
            let secondRID = try #require(second.requestID)
            #expect(firstRID != secondRID)
            let joined = try await client.record(secondRID)
            #expect(joined["joined"]?.string == firstRID, "\(joined)")
            #expect(joined["state"]?.string == "done")
            #expect(joined["response"]?["status"]?.int == 200)
        }
    }

    @Test("calls for different machine actions go upstream at the same time, not one after another")
    func concurrentUpstreamCalls() async throws {
        try await withRig(simulator: ["--delay", "1s"]) { rig in
            let answers = try await withThrowingTaskGroup(of: TransportResponse.self) { group in
                for _ in 0..<4 {
                    group.addTask {
                        try await rig.withSeparateClient { try await $0.cancel(machineActionID()) }
                    }
                }
                return try await group.reduce(into: []) { $0.append($1) }
            }
            for answer in answers {
                #expect(answer.status == 200, "\(answer.summary)")
            }
            let stats = try await rig.simulator.stats()
            #expect(stats.maxInFlight == 4, "4 calls within quota and upstream.max_concurrency 8 overlap upstream: \(stats)")
        }
    }

    @Test("past queue.max_pending the gateway answers 503 QueueFull with Retry-After")
    func queueFull() async throws {
        var options = GatewayOptions()
        options.limits = ["1/1m"]
        options.maxPending = 3
        // The first request is sent at once and held upstream, so the queue's content does not
        // change while the test fills it (whether a request being sent counts is the gateway's call).
        try await withRig(simulator: ["--delay", "3s"], gateway: options) { rig in
            var answers: [TransportResponse] = []
            for _ in 0..<5 {
                answers.append(try await rig.client.cancel(machineActionID(), prefer: "respond-async"))
            }
            for answer in answers.prefix(3) {
                #expect(answer.status == 202, "\(answer.summary)")
            }
            let refused = answers[4]
            #expect(refused.status == 503, "\(refused.summary)")
            #expect(refused.errorCode == "QueueFull", "\(refused.summary)")
            #expect(refused.header("Retry-After") != nil)
            // The first request leaves once its attempt is stored, which a busy machine may delay
            // past the admissions; the 1/1m limit lets no other follow it.
            let stats = try await eventually("the first request upstream", { try await rig.simulator.stats() }) { $0.arrivals >= 1 }
            #expect(stats.arrivals == 1, "\(stats)")
        }
    }
}
