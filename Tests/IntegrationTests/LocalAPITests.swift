import Foundation
import MDEGateTransport
import Testing

/// The local API's routes, as a tool on the host sees them through the Unix socket.
@Suite("Local API: every route's contract", .timeLimit(.minutes(HarnessTime.suiteMinutes)))
struct LocalAPITests {
    @Test("a synchronous cancel answers with the upstream's status and body, and names its request")
    func synchronousPassthrough() async throws {
        try await withRig { rig in
            let id = machineActionID()
            let answer = try await rig.client.cancel(id, comment: "stop the scan")
            #expect(answer.status == 200, "\(answer.summary)")
            let body = try answer.json()
            #expect(body["id"]?.string == id)
            #expect(body["status"]?.string == "Cancelled")
            #expect(body["cancellationComment"]?.string == "stop the scan")
            #expect(answer.header("Mdegate-Coalesced") == nil)

            let rid = try #require(answer.requestID, "no Mdegate-Request-Id header")
            let record = try await rig.client.record(rid)
            #expect(record["id"]?.string == rid)
            #expect(record["machineActionId"]?.string?.lowercased() == id)
            #expect(record["comment"]?.string == "stop the scan")
            #expect(record["state"]?.string == "done")
            #expect(record["attempts"]?.int == 1)
            #expect(record["joined"]?.isNull == true)
            #expect(record["createdAt"]?.string != nil)
            #expect(record["completedAt"]?.string != nil)
            #expect(record["response"]?["status"]?.int == 200)
            #expect(record["response"]?["body"] == body, "response.body is the upstream's JSON as an object")
            #expect(record["client"]?["uid"]?.int == Int(getuid()))

            let stats = try await rig.simulator.stats()
            #expect(stats.arrivals(for: id) == 1)
        }
    }

    @Test("an upstream 404 is passed through as it came and is final")
    func notFoundPassthrough() async throws {
        try await withRig { rig in
            let id = unknownMachineActionID()
            let answer = try await rig.client.cancel(id)
            #expect(answer.status == 404, "\(answer.summary)")
            #expect(answer.errorCode == "ResourceNotFound", "the upstream's code, not one of mdegate's")
            #expect(try answer.json()["error"]?["message"]?.string?.contains(id) == true)

            let rid = try #require(answer.requestID)
            let record = try await rig.client.record(rid)
            #expect(record["state"]?.string == "failed")
            #expect(record["attempts"]?.int == 1)
            #expect(record["response"]?["status"]?.int == 404)
            #expect(try await rig.simulator.stats().arrivals(for: id) == 1, "a 4xx is not retried")
        }
    }

    @Test("Prefer: respond-async answers 202 with Location and the stored record, which later shows the answer")
    func asynchronousCancel() async throws {
        try await withRig { rig in
            let id = machineActionID()
            let accepted = try await rig.client.cancel(id, comment: "async", client: "soar", prefer: "respond-async")
            #expect(accepted.status == 202, "\(accepted.summary)")
            let record = try accepted.json()
            let rid = try #require(record["id"]?.string, "the 202 body is the record: \(accepted.text)")
            #expect(accepted.header("Location") == "/v1/requests/\(rid)")
            #expect(accepted.requestID == rid)
            #expect(record["machineActionId"]?.string?.lowercased() == id)
            #expect(record["comment"]?.string == "async")
            #expect(record["client"]?["name"]?.string == "soar")
            #expect(record["client"]?["uid"]?.int == Int(getuid()))
            #expect(["queued", "sending", "done"].contains(record["state"]?.string ?? ""), "\(record)")

            let finished = try await rig.client.finishedRecord(rid)
            #expect(finished["state"]?.string == "done")
            #expect(finished["attempts"]?.int == 1)
            #expect(finished["response"]?["status"]?.int == 200)
            #expect(finished["response"]?["body"]?["id"]?.string == id)
            #expect(finished["completedAt"]?.string != nil)
            #expect(finished["estimatedDispatchAt"] == nil || finished["estimatedDispatchAt"]?.isNull == true,
                    "estimatedDispatchAt is only present while queued")
        }
    }

    @Test("respond-async wins over wait=N: an idle gateway still answers 202")
    func respondAsyncWinsOverWait() async throws {
        try await withRig { rig in
            let answer = try await rig.client.cancel(machineActionID(), prefer: "respond-async, wait=10")
            #expect(answer.status == 202, "\(answer.summary)")
        }
    }

    @Test("Prefer: wait=N answers like a synchronous call when the upstream answers in time")
    func waitAnsweredInTime() async throws {
        try await withRig { rig in
            let id = machineActionID()
            let answer = try await rig.client.cancel(id, prefer: "wait=20")
            #expect(answer.status == 200, "\(answer.summary)")
            #expect(try answer.json()["id"]?.string == id)
        }
    }

    @Test("under a spent quota, wait=1 answers 202 with a queued record; DELETE withdraws it, and a sent request answers 409")
    func waitThenWithdraw() async throws {
        var options = GatewayOptions()
        options.limits = ["1/1m"]
        try await withRig(gateway: options) { rig in
            let first = try await rig.client.cancel(machineActionID(), client: "cron")
            #expect(first.status == 200, "\(first.summary)")
            let sentRID = try #require(first.requestID)

            let id = machineActionID()
            let waited = try await rig.client.cancel(id, client: "cron", prefer: "wait=1")
            #expect(waited.status == 202, "\(waited.summary)")
            let record = try waited.json()
            let rid = try #require(record["id"]?.string, "\(waited.text)")
            #expect(waited.header("Location") == "/v1/requests/\(rid)")
            #expect(record["state"]?.string == "queued")
            #expect(record["position"]?.int != nil, "position is present while queued: \(record)")
            #expect(record["estimatedDispatchAt"]?.string != nil, "estimatedDispatchAt is present while queued: \(record)")

            let status = try await rig.client.status()
            #expect(status["queue"]?["depth"]?.int == 1, "\(status)")
            let clients = status["queue"]?["clients"]?.array ?? []
            #expect(clients.count == 1, "\(status)")
            #expect(clients.first?["client"]?.string?.contains("cron") == true, "\(status)")
            #expect(clients.first?["depth"]?.int == 1, "\(status)")
            #expect(status["limits"]?[0]?["used"]?.int == 1, "\(status)")
            #expect(status["limits"]?[0]?["nextFreeAt"]?.string != nil, "\(status)")

            let withdrawn = try await rig.client.http.send("DELETE", "/v1/requests/\(rid)")
            #expect(withdrawn.status == 200, "\(withdrawn.summary)")
            #expect(try withdrawn.json()["state"]?.string == "withdrawn")
            let again = try await rig.client.http.send("DELETE", "/v1/requests/\(rid)")
            #expect(again.status == 200, "withdrawing twice is harmless: \(again.summary)")
            #expect(try again.json()["state"]?.string == "withdrawn")
            #expect(try await rig.client.record(rid)["state"]?.string == "withdrawn")
            #expect(try await rig.client.status()["queue"]?["depth"]?.int == 0)

            let tooLate = try await rig.client.http.send("DELETE", "/v1/requests/\(sentRID)")
            #expect(tooLate.status == 409, "\(tooLate.summary)")

            let stats = try await rig.simulator.stats()
            #expect(stats.arrivals(for: id) == 0, "a withdrawn request never reaches the upstream")
            #expect(stats.arrivals == 1)
        }
    }

    @Test("GET /v1/status describes limits, guard, queue, pause, upstream and auth, and counts what was spent")
    func statusDocument() async throws {
        // Minute windows: the call must still count when status is read, however slow the machine.
        var options = GatewayOptions()
        options.limits = ["5/1m", "12/4m"]
        try await withRig(gateway: options) { rig in
            let fresh = try await rig.client.status()
            let limits = try #require(fresh["limits"]?.array, "\(fresh)")
            #expect(limits.count == 2)
            #expect(limits.first?["spec"]?.string == "5/1m")
            #expect(limits.first?["calls"]?.int == 5)
            #expect(limits.first?["windowSeconds"]?.double == 60)
            #expect(limits.last?["spec"]?.string == "12/4m")
            #expect(limits.last?["calls"]?.int == 12)
            #expect(limits.last?["windowSeconds"]?.double == 240)
            for limit in limits {
                #expect(limit["used"]?.int == 0)
                #expect(limit["nextFreeAt"]?.isNull ?? true, "a limit with room has no next free slot: \(limit)")
            }
            #expect(fresh["guardMs"]?.double == 30)
            #expect(fresh["queue"]?["depth"]?.int == 0)
            #expect(fresh["queue"]?["clients"]?.array?.isEmpty == true)
            #expect(fresh["pausedUntil"]?.isNull == true)
            #expect(fresh["inFlight"]?.int == 0)
            #expect(fresh["upstream"]?["baseUrl"]?.string?.hasPrefix(rig.simulator.baseURL) == true, "\(fresh)")
            #expect(fresh["auth"]?["mode"]?.string == "token_file")

            let answer = try await rig.client.cancel(machineActionID())
            #expect(answer.status == 200)
            let after = try await rig.client.status()
            #expect(after["limits"]?[0]?["used"]?.int == 1, "\(after)")
            #expect(after["limits"]?[1]?["used"]?.int == 1, "\(after)")
            #expect(after["upstream"]?["lastStatus"]?.int == 200, "\(after)")
            #expect(after["inFlight"]?.int == 0)
        }
    }

    @Test("GET /healthz answers 200 once the daemon is ready")
    func health() async throws {
        try await withRig { rig in
            let answer = try await rig.client.http.get("/healthz")
            #expect(answer.status == 200, "\(answer.summary)")
        }
    }

    @Test("unknown routes answer 404 NotFound, wrong methods 405, unknown requests 404 NotFound")
    func routingErrors() async throws {
        try await withRig { rig in
            let unknownRoute = try await rig.client.http.get("/v2/nothing-here")
            #expect(unknownRoute.status == 404, "\(unknownRoute.summary)")
            #expect(unknownRoute.errorCode == "NotFound")

            let getCancel = try await rig.client.http.get(GatewayClient.cancelPath(machineActionID()))
            #expect(getCancel.status == 405, "\(getCancel.summary)")
            let postStatus = try await rig.client.http.send("POST", "/v1/status", body: Array("{}".utf8))
            #expect(postStatus.status == 405, "\(postStatus.summary)")
            let putRequest = try await rig.client.http.send("PUT", "/v1/requests/\(machineActionID())", body: Array("{}".utf8))
            #expect(putRequest.status == 405, "\(putRequest.summary)")

            let unknownRequest = try await rig.client.http.get("/v1/requests/\(machineActionID())")
            #expect(unknownRequest.status == 404, "\(unknownRequest.summary)")
            #expect(unknownRequest.errorCode == "NotFound")
            let deleteUnknown = try await rig.client.http.send("DELETE", "/v1/requests/\(machineActionID())")
            #expect(deleteUnknown.status == 404, "\(deleteUnknown.summary)")
            #expect(deleteUnknown.errorCode == "NotFound")

            #expect(try await rig.simulator.stats().arrivals == 0)
        }
    }

    @Test("an Authorization header from a client is ignored: the gateway sends its own token")
    func clientAuthorizationIgnored() async throws {
        try await withRig { rig in
            let answer = try await rig.client.cancel(machineActionID(), headers: [.authorization: "Bearer wrong"])
            #expect(answer.status == 200, "a forwarded wrong token would have earned 401: \(answer.summary)")
            let stats = try await rig.simulator.stats()
            #expect(stats.answered(401) == 0)
            #expect(stats.answered(200) == 1)
        }
    }

    @Test("a Comment of exactly 1,000 characters is accepted and sent")
    func longestComment() async throws {
        try await withRig { rig in
            let comment = String(repeating: "c", count: 1000)
            let answer = try await rig.client.cancel(machineActionID(), comment: comment)
            #expect(answer.status == 200, "\(answer.summary)")
            #expect(try answer.json()["cancellationComment"]?.string == comment)
        }
    }
}
