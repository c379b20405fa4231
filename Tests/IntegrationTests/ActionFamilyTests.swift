import Foundation
import HTTPTypes
import MDEGateTransport
import MDEGateWire
import Testing

/// The machine-action family end to end: the real daemon, its socket, libcurl and the simulator
/// serving every route with a strict limit per API.
@Suite("The machine-action family through the daemon: routes, a quota per API, crashes", .timeLimit(.minutes(HarnessTime.suiteMinutes)))
struct ActionFamilyTests {
    /// A machine id (40 hex digits), distinct per call.
    static func machineID() -> String {
        (0..<40).map { _ in String(UInt8.random(in: 0...15), radix: 16) }.joined()
    }

    static let machineRoutes: [(action: String, body: JSON, type: String)] = [
        ("isolate", ["Comment": "c", "IsolationType": "Full"], "Isolate"),
        ("unisolate", ["Comment": "c"], "Unisolate"),
        ("runAntiVirusScan", ["Comment": "c", "ScanType": "Quick"], "RunAntiVirusScan"),
        ("collectInvestigationPackage", ["Comment": "c"], "CollectInvestigationPackage"),
        ("restrictCodeExecution", ["Comment": "c"], "RestrictCodeExecution"),
        ("unrestrictCodeExecution", ["Comment": "c"], "UnrestrictCodeExecution"),
        ("StopAndQuarantineFile", ["Comment": "c", "Sha1": "87662bc3d60e4200ceaf7aae249d1c343f4b83c9"], "StopAndQuarantineFile"),
    ]

    /// `POST /api/machines/{machine}/{action}` through the gateway.
    static func post(
        _ client: GatewayClient, _ machine: String, _ action: String, _ body: JSON, prefer: String? = nil
    ) async throws -> TransportResponse {
        var headers: HTTPFields = [.contentType: "application/json"]
        if let prefer { headers[.prefer] = prefer }
        return try await client.http.send("POST", "/api/machines/\(machine)/\(action)", headers: headers, body: body.bytes)
    }

    /// The simulator's counters of one API (`byApi` in `GET /_sim/stats`).
    static func apiStats(_ simulator: SimulatorProcess, _ api: String) async throws -> JSON {
        let response = try await simulator.client.get("/_sim/stats")
        return try response.json()["byApi"]?[api] ?? .object([:])
    }

    @Test("every machine route goes through the daemon and comes back with the upstream's 201 and MachineAction; the action reads back with GET and in the listing")
    func everyRoute() async throws {
        // Minute windows: each call must still count when status is read, however slow the build.
        var options = GatewayOptions()
        options.limits = ["5/1m", "12/4m"]
        try await withRig(gateway: options) { rig in
            var created: [String] = []
            for route in Self.machineRoutes {
                let answer = try await Self.post(rig.client, Self.machineID(), route.action, route.body)
                #expect(answer.status == 201, "\(route.action): \(answer.summary)")
                let action = try answer.json()
                #expect(action["type"]?.string == route.type, "\(action)")
                created.append(try #require(action["id"]?.string))
            }
            let read = try await rig.client.http.get("/api/machineactions/\(created[0])")
            #expect(read.status == 200, "\(read.summary)")
            #expect(try read.json()["id"]?.string == created[0])
            let listing = try await rig.client.http.get("/api/machineactions?$filter=type%20eq%20'Isolate'&$top=5")
            #expect(listing.status == 200, "\(listing.summary)")
            let ids = try listing.json()["value"]?.array?.compactMap { $0["id"]?.string } ?? []
            #expect(ids.contains(created[0]), "\(ids)")
            let status = try await rig.client.status()
            for api in ["isolate", "unisolate", "run_antivirus_scan", "get_machine_action", "list_machine_actions"] {
                let state = status["apis"]?.array?.first { $0["name"]?.string == api }
                // The hour's limit: on a loaded machine the test can outlast the minute's window.
                let hourly = state?["limits"]?.array?.max { ($0["windowSeconds"]?.double ?? 0) < ($1["windowSeconds"]?.double ?? 0) }
                #expect(hourly?["used"]?.int == 1, "\(api): \(status)")
            }
        }
    }

    @Test("a saturating burst on isolate while cancels and GETs flow: no API's limit is broken, and cancel and GET never wait for isolate")
    func saturatedIsolateDelaysNothingElse() async throws {
        var options = GatewayOptions()
        options.apiLimits = ["isolate": ["2/1s", "4/4s"]]
        options.guardBand = GatewayOptions.strictUpstreamGuard
        try await withRig(
            simulator: ["--limit", "5/1s", "--limit", "12/4s", "--api-limits", "isolate=2/1s,4/4s"],
            gateway: options, alone: true
        ) { rig in
            var isolates: [String] = []
            for _ in 0..<10 {
                let accepted = try await Self.post(
                    rig.client, Self.machineID(), "isolate", ["Comment": "c", "IsolationType": "Full"], prefer: "respond-async")
                #expect(accepted.status == 202, "\(accepted.summary)")
                isolates.append(try #require(try accepted.json()["id"]?.string))
            }
            // The first isolate's MachineAction, to read back with GET.
            let first = try await rig.client.finishedRecord(isolates[0])
            let actionID = try #require(first["response"]?["body"]?["id"]?.string, "\(first)")
            for _ in 0..<4 {
                let cancel = try await rig.client.cancel(machineActionID())
                #expect(cancel.status == 200, "\(cancel.summary)")
                let read = try await rig.client.http.get("/api/machineactions/\(actionID)")
                #expect(read.status == 200, "\(read.summary)")
            }
            let meanwhile = try await rig.client.status()
            let isolate = meanwhile["apis"]?.array?.first { $0["name"]?.string == "isolate" }
            #expect((isolate?["queued"]?.int ?? 0) > 0, "cancel and GET went while isolates still waited: \(meanwhile)")
            for rid in isolates {
                let record = try await rig.client.finishedRecord(rid, timeout: .seconds(60))
                #expect(record["state"]?.string == "done", "\(record)")
                #expect(record["response"]?["status"]?.int == 201, "\(record)")
            }
            for api in ["isolate", "cancel", "get_machine_action"] {
                let stats = try await Self.apiStats(rig.simulator, api)
                #expect(stats["violations"]?.int == 0, "\(api): \(stats)")
                #expect((stats["arrivals"]?.int ?? 0) > 0, "\(api): \(stats)")
            }
        }
    }

    @Test("a 429 on isolate pauses isolate only: cancels still go, and the pause shows under isolate")
    func throttlingPausesOneAPI() async throws {
        try await withRig { rig in
            try await rig.simulator.setFaults(["next429": ["count": 1, "retryAfter": 60], "apis": ["isolate"]])
            let accepted = try await Self.post(
                rig.client, Self.machineID(), "isolate", ["Comment": "c", "IsolationType": "Selective"], prefer: "respond-async")
            #expect(accepted.status == 202, "\(accepted.summary)")
            let simulator = rig.simulator
            _ = try await eventually("the upstream to answer isolate with 429", { try await Self.apiStats(simulator, "isolate") }) {
                $0["answered"]?["429"]?.int == 1
            }
            let status = try await eventually("the gateway to report the pause", { try await rig.client.status() }) {
                $0["apis"]?.array?.first { $0["name"]?.string == "isolate" }?["pausedUntil"]?.string != nil
            }
            #expect(status["pausedUntil"] == .null, "cancel is not paused: \(status)")
            let cancel = try await rig.client.cancel(machineActionID())
            #expect(cancel.status == 200, "\(cancel.summary)")
        }
    }

    @Test("kill -9 in the middle of bursts on three APIs: every accepted request completes, and no API's limit is broken")
    func crashAcrossAPIs() async throws {
        var options = GatewayOptions()
        options.limits = ["3/1s", "8/4s"]
        options.guardBand = GatewayOptions.strictUpstreamGuard
        try await withRig(
            simulator: ["--limit", "3/1s", "--limit", "8/4s", "--retry-after", "1", "--delay", "50ms"],
            gateway: options, alone: true
        ) { rig in
            var requests: [String] = []
            for index in 0..<24 {
                let accepted: TransportResponse
                switch index % 3 {
                case 0: accepted = try await rig.client.cancel(machineActionID(), prefer: "respond-async")
                case 1:
                    accepted = try await Self.post(
                        rig.client, Self.machineID(), "isolate", ["Comment": "c", "IsolationType": "Full"], prefer: "respond-async")
                default:
                    accepted = try await Self.post(
                        rig.client, Self.machineID(), "runAntiVirusScan", ["Comment": "c", "ScanType": "Full"], prefer: "respond-async")
                }
                #expect(accepted.status == 202, "\(accepted.summary)")
                requests.append(try #require(try accepted.json()["id"]?.string))
            }
            let simulator = rig.simulator
            _ = try await eventually("attempts of every API to reach the upstream", { try await simulator.stats() }) {
                $0.arrivals >= 6
            }
            try await rig.gateway.crash()
            let restarted = try await GatewayProcess(directory: rig.directory, options: options, upstream: rig.simulator)
            do {
                for rid in requests {
                    let record = try await restarted.client.finishedRecord(rid, timeout: .seconds(60))
                    // A send cut short by the kill is sent again. If the first one had reached
                    // MDE, MDE refuses the second machine action with 400
                    // ActiveRequestAlreadyExists, and the gateway passes that answer on.
                    let resentAndRefused =
                        record["state"]?.string == "failed" && (record["attempts"]?.int ?? 0) >= 2
                        && record["response"]?["body"]?["error"]?["code"]?.string == "ActiveRequestAlreadyExists"
                    #expect(record["state"]?.string == "done" || resentAndRefused, "\(record)")
                }
                for api in ["cancel", "isolate", "run_antivirus_scan"] {
                    let stats = try await Self.apiStats(rig.simulator, api)
                    #expect(stats["violations"]?.int == 0, "\(api): \(stats)")
                    #expect((8...16).contains(stats["arrivals"]?.int ?? 0), "8 requests, a send cut short may be seen twice: \(api): \(stats)")
                }
            } catch {
                await restarted.stop()
                throw error
            }
            await restarted.stop()
        }
    }
}
