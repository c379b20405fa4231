import Foundation
import MDEGateTransport
import Testing

/// Bad input is refused at the door: it never reaches the upstream and never spends quota.
@Suite("Validation: bad input never reaches the upstream", .timeLimit(.minutes(HarnessTime.suiteMinutes)))
struct ValidationTests {
    /// The promise every test here ends with.
    private func expectNothingSpent(_ rig: TestRig, sourceLocation: SourceLocation = #_sourceLocation) async throws {
        let stats = try await rig.simulator.stats()
        #expect(stats.arrivals == 0, "the upstream saw \(stats)", sourceLocation: sourceLocation)
        let status = try await rig.client.status()
        let limits = try #require(status["limits"]?.array, "\(status)", sourceLocation: sourceLocation)
        #expect(!limits.isEmpty, "\(status)", sourceLocation: sourceLocation)
        for limit in limits {
            #expect(limit["used"]?.int == 0, "quota was spent: \(limit)", sourceLocation: sourceLocation)
        }
        #expect(status["queue"]?["depth"]?.int == 0, sourceLocation: sourceLocation)
    }

    /// mdegate's own error shape: `{"error":{"code","message","target"}}` with a fresh id as target.
    private func expectError(
        _ answer: TransportResponse, status: Int, code: String, _ what: String,
        sourceLocation: SourceLocation = #_sourceLocation
    ) {
        #expect(answer.status == status, "\(what): \(answer.summary)", sourceLocation: sourceLocation)
        let error = (try? answer.json())?["error"]
        #expect(error?["code"]?.string == code, "\(what): \(answer.summary)", sourceLocation: sourceLocation)
        #expect(error?["message"]?.string?.isEmpty == false, "\(what): a message says what is wrong", sourceLocation: sourceLocation)
        #expect(error?["target"]?.string?.isEmpty == false, "\(what): the target is a fresh request id", sourceLocation: sourceLocation)
    }

    @Test("ids that are not GUIDs are refused with 400 InvalidMachineActionId")
    func invalidIDs() async throws {
        try await withRig { rig in
            for id in [
                "not-a-guid",
                "988cc94g-7a8f-4b28-ab65-54970c5d5018",  // g is not hex
                "988cc94e-7a8f-4b28-ab65-54970c5d501",  // one digit short
                "988cc94e-7a8f-4b28-ab65-54970c5d5018a",  // one digit long
                "x988cc94e-7a8f-4b28-ab65-54970c5d5018",
            ] {
                let answer = try await rig.client.cancel(id)
                expectError(answer, status: 400, code: "InvalidMachineActionId", "id '\(id)'")
            }
            try await expectNothingSpent(rig)
        }
    }

    @Test("ids that try to leave the cancel route (../, %2e%2e, %2F) are refused with a 4xx")
    func traversalIDs() async throws {
        try await withRig { rig in
            // libcurl resolves the dot segments itself: the gateway sees /machines/x/cancel.
            for path in [
                "/api/machineactions/../../machines/x/cancel",
                "/api/machineactions/%2e%2e/cancel",
                "/api/machineactions/%2E%2E%2F%2E%2E%2Fmachines%2Fx/cancel",
                "/api/machineactions/..%2F..%2Fmachines%2Fx/cancel",
            ] {
                let answer = try await rig.client.http.send(
                    "POST", path, headers: [.contentType: "application/json"], body: JSON.object(["Comment": "x"]).bytes)
                #expect((400..<500).contains(answer.status), "\(path): \(answer.summary)")
            }
            // The same, sent byte for byte, so the gateway itself has to deal with the dot segments.
            for target in [
                "/api/machineactions/../../machines/x/cancel",
                "/api/machineactions/988cc94e-7a8f-4b28-ab65-54970c5d5018/../../machines/x/cancel",
                "/api/machineactions/./988cc94e-7a8f-4b28-ab65-54970c5d5018/cancel/..",
            ] {
                let answer = try await RawHTTP.exchange(
                    socketPath: rig.gateway.socketPath,
                    head: "POST \(target) HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json",
                    body: #"{"Comment":"x"}"#
                )
                #expect((400..<500).contains(answer.status), "raw \(target): \(answer.text.prefix(500))")
            }
            try await expectNothingSpent(rig)
        }
    }

    @Test("bodies that are not a JSON object with a string Comment are refused with 400 InvalidRequestBody")
    func invalidBodies() async throws {
        try await withRig { rig in
            let id = machineActionID()
            for body in [
                "",
                "not json",
                "[]",
                "\"Comment\"",
                "{}",
                #"{"comment":"property names are case-sensitive"}"#,
                #"{"Comment":5}"#,
                #"{"Comment":null}"#,
                #"{"Comment":["x"]}"#,
                #"{"Comment":"unterminated"#,
                "{\"Comment\":\"\(String(repeating: "x", count: 5000))\"}",
                "{\"Comment\":\"\(String(repeating: "x", count: 1001))\"}",
            ] {
                let answer = try await rig.client.cancel(id, body: Array(body.utf8))
                expectError(answer, status: 400, code: "InvalidRequestBody", "body '\(body.prefix(60))'")
            }
            try await expectNothingSpent(rig)
        }
    }

    @Test("a body over 64 KiB is refused with 413 InvalidRequestBody")
    func oversizedBody() async throws {
        try await withRig { rig in
            let body = "{\"Comment\":\"\(String(repeating: "x", count: 100 * 1024))\"}"
            let answer = try await rig.client.cancel(machineActionID(), body: Array(body.utf8))
            expectError(answer, status: 413, code: "InvalidRequestBody", "a 100 KiB body")

            // The gateway still serves afterwards.
            let healthy = try await rig.client.http.get("/healthz")
            #expect(healthy.status == 200)
            try await expectNothingSpent(rig)
        }
    }
}
