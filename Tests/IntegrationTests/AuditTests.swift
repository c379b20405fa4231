import Foundation
import Testing

/// The audit listing against a daemon with a known history: `GET /v1/requests` and
/// `mdegate requests`, with their filters and pages.
@Suite("Audit listing", .timeLimit(.minutes(HarnessTime.suiteMinutes)))
struct AuditTests {
    @Test("mdegate requests filters by client, state and time, pages with --cursor, and refuses a bad filter by name")
    func listing() async throws {
        try await withRig { rig in
            // Known history: alpha cancels two actions (200), beta one that does not exist (404).
            let first = machineActionID()
            let second = machineActionID()
            #expect(try await rig.client.cancel(first, client: "alpha").status == 200)
            #expect(try await rig.client.cancel(second, client: "alpha").status == 200)
            let missing = try await rig.client.cancel("00000000-" + machineActionID().dropFirst(9), client: "beta")
            #expect(missing.status == 404)
            let gone = try #require(missing.header("Mdegate-Request-Id"))

            // The API: newest first, the queue wait's end in every sent record, no next page.
            let response = try await rig.client.http.get("/v1/requests?client=alpha")
            #expect(response.status == 200, "\(response.summary)")
            let list = try response.json()
            let records = try #require(list["requests"]?.array)
            #expect(records.map { $0["target"]?.string } == [second, first])
            #expect(records.allSatisfy { $0["state"]?.string == "done" && $0["sentAt"]?.string != nil })
            #expect(list["next"] == .null)

            let alpha = try await rig.gateway.cli(["requests", "--client", "alpha"])
            #expect(alpha.exitCode == 0, "\(alpha)")
            let rows = alpha.stdout.split(separator: "\n")
            #expect(rows.first?.hasPrefix("CREATED (UTC)") == true, "\(alpha.stdout)")
            #expect(rows.count == 3, "a header and two rows: \(alpha.stdout)")
            #expect(rows.dropFirst().allSatisfy { $0.contains("alpha") && $0.contains(" done ") && $0.contains(" 200 ") }, "\(alpha.stdout)")
            #expect(rows[1].contains(second) && rows[2].contains(first), "newest first: \(alpha.stdout)")
            #expect(rows[1].contains("\(getuid())/"), "uid/pid: \(alpha.stdout)")

            let failed = try await rig.gateway.cli(["requests", "--state", "failed", "--json"])
            #expect(failed.exitCode == 0, "\(failed)")
            let failedRecords = try JSON(parsing: failed.stdout)["requests"]?.array ?? []
            #expect(failedRecords.map { $0["id"]?.string } == [gone])
            #expect(failedRecords.first?["client"]?["name"]?.string == "beta")
            #expect(failedRecords.first?["response"]?["status"]?.int == 404)

            let recent = try await rig.gateway.cli(["requests", "--since", "1h", "--json"])
            #expect((try JSON(parsing: recent.stdout)["requests"]?.array?.count) == 3, "\(recent)")
            let old = try await rig.gateway.cli(["requests", "--until", "2026-01-01T00:00:00Z"])
            #expect(old.exitCode == 0 && old.stdout.contains("no requests match"), "\(old)")

            // Pages: two, then the last one after --cursor.
            let page = try await rig.gateway.cli(["requests", "--limit", "2"])
            let more = try #require(page.stdout.split(separator: "\n").last { $0.hasPrefix("more: add --cursor ") }, "\(page.stdout)")
            let cursor = String(more.dropFirst("more: add --cursor ".count))
            let rest = try await rig.gateway.cli(["requests", "--limit", "2", "--cursor", cursor])
            #expect(rest.exitCode == 0, "\(rest)")
            #expect(rest.stdout.split(separator: "\n").count == 2, "a header and the oldest: \(rest.stdout)")
            #expect(rest.stdout.contains(first) && !rest.stdout.contains("more:"), "\(rest.stdout)")

            let bad = try await rig.gateway.cli(["requests", "--state", "lost"])
            #expect(bad.exitCode == 1, "\(bad)")
            #expect(bad.stdout.contains("InvalidQuery") && bad.stdout.contains("state \\\"lost\\\""), "\(bad)")
            #expect(try await rig.simulator.stats().arrivals == 3, "reading the listing never reaches the upstream")
        }
    }

    @Test("an instant the daemon cannot hold (year 54, year 9999) is refused with 400 InvalidQuery, and the daemon keeps serving")
    func instantOutOfRange() async throws {
        try await withRig { rig in
            for query in ["until=0054-03-15T19%3A25%3A29.6114Z", "since=9999-12-31T23%3A59%3A59Z"] {
                let response = try await rig.client.http.get("/v1/requests?\(query)")
                #expect(response.status == 400, "\(query): \(response.summary)")
                #expect(response.errorCode == "InvalidQuery", "\(query): \(response.summary)")
            }
            #expect(try await rig.client.http.get("/v1/requests").status == 200)
        }
    }

    @Test("state.retention: a finished request past it is gone from the listing and from GET /v1/requests/{id} after a restart")
    func retention() async throws {
        var options = GatewayOptions()
        options.retention = "1s"
        try await withRig(gateway: options) { rig in
            let answered = try await rig.client.cancel(machineActionID())
            #expect(answered.status == 200)
            let id = try #require(answered.header("Mdegate-Request-Id"))
            let finished = try await rig.client.record(id)
            // The first pump after a start purges: wait until the record is past its retention
            // by the daemon's own clock, as the listing's `until` filter reads it.
            _ = try await eventually("the record older than 1 s", {
                try await rig.gateway.cli(["requests", "--until", "1s", "--json"])
            }) { result in result.stdout.contains(id) }
            #expect(finished["state"]?.string == "done")
            rig.gateway.requestStop()
            _ = try await rig.gateway.process.waitForExit()
            let restarted = try await GatewayProcess(directory: rig.directory, options: options, upstream: rig.simulator)
            do {
                let after = try await restarted.client.http.get("/v1/requests/\(id)")
                #expect(after.status == 404, "\(after.summary)")
                #expect(String(decoding: after.body, as: UTF8.self).contains("state.retention, 1s"), "\(after.summary)")
                let list = try await restarted.cli(["requests", "--json"])
                #expect(list.exitCode == 0 && !list.stdout.contains(id), "\(list)")
            } catch {
                await restarted.stop()
                throw error
            }
            await restarted.stop()
        }
    }
}
