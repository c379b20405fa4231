import Foundation
import HTTPTypes
import Logging
import MDEGateConfig
import MDEGateCore
import MDEGateTransport
import MDEGateWire
import Testing

@testable import MDEGate

/// The machine-action family through the local API, in process: a scripted upstream records
/// every call, so each route's path, body and validation are checked without a socket.
@Suite("Machine-action routes: one table, one ledger per API", .timeLimit(.minutes(SuiteTime.minutes)))
struct ActionRouteTests {
    static let machine = "1e5bc9d7e413ddd7902c2932e418702b84d0cc07"
    static let otherMachine = "2e5bc9d7e413ddd7902c2932e418702b84d0cc07"
    static let sha1 = "87662bc3d60e4200ceaf7aae249d1c343f4b83c9"

    static func request(
        _ method: String, _ uri: String, body: String? = nil, prefer: String? = nil
    ) -> LocalRequest {
        LocalRequest(
            method: method, uri: uri, headers: prefer.map { [.prefer: $0] } ?? [:],
            body: Array((body ?? "").utf8), bodyTooLarge: false, peer: PeerCredentials(pid: 42, uid: 1000, gid: 1000))
    }

    /// A gateway whose upstream answers like MDE: 201 with a MachineAction for the POSTs on
    /// machines, 200 otherwise.
    static func gateway(
        _ limits: [Limit] = [Limit(calls: 100, window: .seconds(60))], store: any GatewayStore = InMemoryStore()
    ) async throws -> (Gateway, LocalAPI, ScriptedUpstream) {
        let upstream = ScriptedUpstream()
        upstream.answer { call in
            let status = call.method == "POST" && call.path.hasPrefix("/api/machines/") ? 201 : 200
            return .success(
                TransportResponse(status: status, headers: [.contentType: "application/json"], body: Array(#"{"id":"x"}"#.utf8)))
        }
        let gateway = scriptedGateway(.testing(limits), store: store, upstream: upstream)
        try await gateway.start()
        return (gateway, LocalAPI(gateway: gateway, logger: Logger(label: "test")), upstream)
    }

    @Test(
        "every route reaches the upstream with Microsoft's path and a canonical body, and its answer comes back as it came",
        arguments: [
            ("POST", "/api/machineactions/\(actionID(1))/cancel", #"{"Comment":"c"}"#,
             "/api/machineactions/\(actionID(1))/cancel", #"{"Comment":"c"}"#, 200),
            ("GET", "/api/machineactions/\(actionID(2))", nil, "/api/machineactions/\(actionID(2))", "", 200),
            ("GET", "/api/machineactions", nil, "/api/machineactions", "", 200),
            ("POST", "/api/machines/\(machine)/isolate", #"{"Comment":"c","IsolationType":"selective","Other":1}"#,
             "/api/machines/\(machine)/isolate", #"{"Comment":"c","IsolationType":"Selective"}"#, 201),
            ("POST", "/api/machines/\(machine)/unisolate", #"{"Comment":"c"}"#, "/api/machines/\(machine)/unisolate",
             #"{"Comment":"c"}"#, 201),
            ("POST", "/api/machines/\(machine)/RUNANTIVIRUSSCAN", #"{"Comment":"c","ScanType":"Quick"}"#,
             "/api/machines/\(machine)/runAntiVirusScan", #"{"Comment":"c","ScanType":"Quick"}"#, 201),
            ("POST", "/api/machines/\(machine)/collectInvestigationPackage", #"{"Comment":"c"}"#,
             "/api/machines/\(machine)/collectInvestigationPackage", #"{"Comment":"c"}"#, 201),
            ("POST", "/api/machines/\(machine)/restrictCodeExecution", #"{"Comment":"c"}"#,
             "/api/machines/\(machine)/restrictCodeExecution", #"{"Comment":"c"}"#, 201),
            ("POST", "/api/machines/\(machine)/unrestrictcodeexecution", #"{"Comment":"c"}"#,
             "/api/machines/\(machine)/unrestrictCodeExecution", #"{"Comment":"c"}"#, 201),
            ("POST", "/api/machines/\(machine)/stopAndQuarantineFile", #"{"Comment":"c","Sha1":"\#(sha1)"}"#,
             "/api/machines/\(machine)/StopAndQuarantineFile", #"{"Comment":"c","Sha1":"\#(sha1)"}"#, 201),
        ] as [(String, String, String?, String, String, Int)])
    func everyRoute(
        method: String, uri: String, body: String?, upstreamPath: String, upstreamBody: String, status: Int
    ) async throws {
        let (_, api, upstream) = try await Self.gateway()
        let answer = await api.handle(Self.request(method, uri, body: body))
        #expect(answer.status == status)
        #expect(answer.headers[.mdegateRequestID] != nil)
        let call = try #require(upstream.arrivals.first)
        #expect(upstream.arrivals.count == 1)
        #expect(call.method == method)
        #expect(call.path == upstreamPath)
        #expect(String(decoding: call.body, as: UTF8.self) == upstreamBody)
    }

    @Test(
        "bad input on any route gets 400 naming the rule, and never reaches the upstream",
        arguments: [
            ("POST", "/api/machines/1e5bc9d7/isolate", #"{"Comment":"c","IsolationType":"Full"}"#, "InvalidMachineId"),
            ("POST", "/api/machines/\(machine)g/isolate", #"{"Comment":"c","IsolationType":"Full"}"#, "InvalidMachineId"),
            ("POST", "/api/machines/\(machine)/isolate", #"{"Comment":"c"}"#, "InvalidRequestBody"),
            ("POST", "/api/machines/\(machine)/isolate", #"{"Comment":"c","IsolationType":"Partial"}"#, "InvalidRequestBody"),
            ("POST", "/api/machines/\(machine)/isolate", #"{"Comment":"c","IsolationType":3}"#, "InvalidRequestBody"),
            ("POST", "/api/machines/\(machine)/runAntiVirusScan", #"{"Comment":"c","ScanType":"Deep"}"#, "InvalidRequestBody"),
            ("POST", "/api/machines/\(machine)/StopAndQuarantineFile", #"{"Comment":"c","Sha1":"abc"}"#, "InvalidRequestBody"),
            ("POST", "/api/machines/\(machine)/unisolate", #"{"comment":"c"}"#, "InvalidRequestBody"),
            ("POST", "/api/machines/\(machine)/unisolate", "", "InvalidRequestBody"),
            ("GET", "/api/machineactions/not-a-guid", nil, "InvalidMachineActionId"),
            ("GET", "/api/machineactions?$orderby=creationDateTimeUtc", nil, "InvalidQuery"),
            ("GET", "/api/machineactions?$top=0", nil, "InvalidQuery"),
            ("GET", "/api/machineactions?$top=10&$top=20", nil, "InvalidQuery"),
            ("GET", "/api/machineactions?$skip=-1", nil, "InvalidQuery"),
            ("GET", "/api/machineactions?$filter=%ZZ", nil, "InvalidQuery"),
            ("GET", "/api/machineactions?$filter=a%0Ab", nil, "InvalidQuery"),
        ] as [(String, String, String?, String)])
    func badInput(method: String, uri: String, body: String?, code: String) async throws {
        let (gateway, api, upstream) = try await Self.gateway()
        let answer = await api.handle(Self.request(method, uri, body: body))
        #expect(answer.status == 400)
        let error = try JSON.decoder.decode(ErrorDocument.self, from: Data(answer.body))
        #expect(error.error.code == code, "\(error.error.message)")
        #expect(upstream.arrivals.isEmpty)
        #expect(await gateway.records.isEmpty, "nothing became a request")
        #expect(await gateway.status().apis.allSatisfy { $0.limits.allSatisfy { $0.used == 0 } }, "no quota spent")
    }

    @Test("two identical isolates waiting together get one upstream call and the same answer, the second marked Mdegate-Coalesced")
    func coalescedAnswers() async throws {
        let store = InMemoryStore()
        // isolate's one slot a second is taken: both requests wait for the next.
        try await store.apply([.attempt(.isolate, Gateway.wallClock())])
        let (_, api, upstream) = try await Self.gateway([Limit(calls: 1, window: .seconds(1))], store: store)
        let isolate = Self.request(
            "POST", "/api/machines/\(Self.machine)/isolate", body: #"{"Comment":"c","IsolationType":"Full"}"#)
        async let first = api.handle(isolate)
        async let second = api.handle(isolate)
        let answers = await [first, second]
        #expect(answers.map(\.status) == [201, 201])
        #expect(answers.filter { $0.headers[.mdegateCoalesced] == "true" }.count == 1)
        #expect(answers[0].body == answers[1].body)
        #expect(upstream.arrivals.count == 1)
    }

    @Test("a method a route does not take gets 405 with Allow; an unknown action on a machine gets 404")
    func methods() async throws {
        let (_, api, upstream) = try await Self.gateway()
        let get = await api.handle(Self.request("GET", "/api/machines/\(Self.machine)/isolate"))
        #expect(get.status == 405)
        #expect(get.headers[.allow] == "POST")
        let delete = await api.handle(Self.request("DELETE", "/api/machineactions/\(actionID(1))"))
        #expect(delete.status == 405)
        #expect(delete.headers[.allow] == "GET")
        let unknown = await api.handle(Self.request("POST", "/api/machines/\(Self.machine)/offboard", body: #"{"Comment":"c"}"#))
        #expect(unknown.status == 404)
        #expect(upstream.arrivals.isEmpty)
    }

    @Test("the listing passes $filter, $top and $skip on, decoded and encoded again, in a fixed order")
    func listingOptions() async throws {
        let (_, api, upstream) = try await Self.gateway()
        let answer = await api.handle(
            Self.request("GET", "/api/machineactions?$skip=5&$filter=status+eq+%27Pending%27&$top=10"))
        #expect(answer.status == 200)
        #expect(upstream.arrivals.first?.path == "/api/machineactions?$filter=status%20eq%20%27Pending%27&$top=10&$skip=5")
    }

    @Test("a saturated isolate never delays a cancel or a GET; status shows each API's quota and queue")
    func lanesAreIndependent() async throws {
        let store = InMemoryStore()
        // isolate spent its hour already; the other APIs did not.
        try await store.apply([.attempt(.isolate, Gateway.wallClock())])
        let (gateway, api, upstream) = try await Self.gateway([Limit(calls: 1, window: .seconds(3600))], store: store)
        for _ in 0..<3 {
            let queued = await api.handle(
                Self.request(
                    "POST", "/api/machines/\(Self.machine)/isolate", body: #"{"Comment":"c","IsolationType":"Full"}"#,
                    prefer: "respond-async"))
            #expect(queued.status == 202)
        }
        let cancel = await api.handle(Self.request("POST", "/api/machineactions/\(actionID(1))/cancel", body: #"{"Comment":"c"}"#))
        #expect(cancel.status == 200)
        let get = await api.handle(Self.request("GET", "/api/machineactions/\(actionID(2))"))
        #expect(get.status == 200)
        #expect(upstream.arrivals.map(\.method) == ["POST", "GET"], "only the cancel and the GET went")

        let status = await gateway.status()
        let isolate = try #require(status.apis.first { $0.name == "isolate" })
        #expect(isolate.queued == 1, "three identical isolates are one upstream call")
        #expect(isolate.limits[0].used == 1)
        #expect(isolate.limits[0].nextFreeAt != nil)
        #expect(status.apis.first { $0.name == "cancel" }?.limits[0].used == 1)
        #expect(status.apis.first { $0.name == "get_machine_action" }?.limits[0].used == 1)
        #expect(status.apis.map(\.name) == Route.apis.map(\.name))
    }

    @Test("a 429 on one API pauses that API only, and the pause is stored under its name")
    func throttlingPausesOneAPI() async throws {
        let store = InMemoryStore()
        let (gateway, api, upstream) = try await Self.gateway(store: store)
        upstream.answer { call in
            if call.path.hasSuffix("/isolate") {
                return .success(TransportResponse(status: 429, headers: [.retryAfter: "3600"], body: []))
            }
            return .success(TransportResponse(status: 200, headers: [:], body: []))
        }
        let isolate = await api.handle(
            Self.request(
                "POST", "/api/machines/\(Self.machine)/isolate", body: #"{"Comment":"c","IsolationType":"Full"}"#,
                prefer: "wait=0"))
        #expect(isolate.status == 202, "throttled, so still queued when the wait ends")
        await upstream.arrived(1)
        let cancel = await api.handle(Self.request("POST", "/api/machineactions/\(actionID(1))/cancel", body: #"{"Comment":"c"}"#))
        #expect(cancel.status == 200, "cancel is not paused")
        let status = await gateway.status()
        #expect(status.apis.first { $0.name == "isolate" }?.pausedUntil != nil)
        #expect(status.apis.first { $0.name == "cancel" }?.pausedUntil == nil)
        #expect(status.pausedUntil == nil, "the top-level pause is cancel's")
        #expect(status.systemdStatus.contains("; isolate 1 of 100/1m; isolate paused after a 429 until "), "\(status.systemdStatus)")
        #expect(status.systemdStatus.contains("quota used 1 of 100/1m"), "cancel's use leads the line")
        #expect(try await store.load().pauses.keys.map(\.name) == ["isolate"])
    }

    @Test("identical actions on a machine coalesce; another parameter, machine or API does not; GETs coalesce, listings never")
    func coalescing() async throws {
        let store = InMemoryStore()
        let now = Gateway.wallClock()
        // Every API spent its hour: whatever is submitted stays queued, so coalescing shows.
        try await store.apply(Route.apis.map { .attempt($0, now) })
        let (gateway, _, _) = try await Self.gateway([Limit(calls: 1, window: .seconds(3600))], store: store)
        func submit(_ call: ActionCall) async throws -> RequestRecordDocument {
            guard case .accepted(let document) = try await gateway.submit(call, client: testClient, waiting: .untilStored).get()
            else { throw CancellationError() }
            return document
        }
        let full = ActionCall(api: .isolate, target: Self.machine, comment: "a", options: ["IsolationType": "Full"])
        let first = try await submit(full)
        #expect(first.joined == nil)
        var again = full
        again.comment = "another comment"
        again.target = Self.machine.uppercased()
        #expect(try await submit(again).joined == first.id, "same machine (any case), same type: one call")
        var selective = full
        selective.options = ["IsolationType": "Selective"]
        #expect(try await submit(selective).joined == nil)
        var otherMachine = full
        otherMachine.target = Self.otherMachine
        #expect(try await submit(otherMachine).joined == nil)
        #expect(try await submit(ActionCall(api: .unisolate, target: Self.machine, comment: "a")).joined == nil)

        let get = ActionCall(api: .getMachineAction, target: actionID(1))
        let firstGet = try await submit(get)
        #expect(try await submit(get).joined == firstGet.id)
        let listing = ActionCall(api: .listMachineActions, target: "", options: ["$top": "5"])
        _ = try await submit(listing)
        #expect(try await submit(listing).joined == nil)

        let record = try #require(await gateway.document(first.id))
        #expect(record.api == "isolate")
        #expect(record.target == Self.machine)
        #expect(record.machineActionId == nil)
        #expect(record.options == ["IsolationType": "Full"])
        #expect(record.comment == "a")
        #expect(try #require(await gateway.document(firstGet.id)).comment == nil)
    }

    @Test("a queued call of any API survives a restart with its parameters, and leaves with them")
    func survivesRestart() async throws {
        let scratch = SQLiteStoreTests.Scratch()
        var store = try scratch.open()
        try await store.apply([.attempt(.runAntivirusScan, Gateway.wallClock())])
        let (gateway, api, upstream) = try await Self.gateway([Limit(calls: 1, window: .seconds(3600))], store: store)
        let accepted = await api.handle(
            Self.request(
                "POST", "/api/machines/\(Self.machine)/runAntiVirusScan", body: #"{"Comment":"scan it","ScanType":"full"}"#,
                prefer: "respond-async"))
        #expect(accepted.status == 202)
        let id = try #require(accepted.headers[.mdegateRequestID])
        try await gateway.drain().get()
        try await store.close()
        #expect(upstream.arrivals.isEmpty)

        store = try scratch.open()
        let (restarted, _, upstreamAfter) = try await Self.gateway([Limit(calls: 1, window: .seconds(3600))], store: store)
        let record = try #require(await restarted.records[id])
        #expect(record.call == ActionCall(api: .runAntivirusScan, target: Self.machine, comment: "scan it", options: ["ScanType": "Full"]))
        #expect(await restarted.status().apis.first { $0.name == "run_antivirus_scan" }?.limits[0].used == 1, "its ledger was kept")
        try await restarted.loosen(to: [Limit(calls: 2, window: .seconds(3600))])
        await upstreamAfter.arrived(1)
        let call = try #require(upstreamAfter.arrivals.first)
        #expect(call.path == "/api/machines/\(Self.machine)/runAntiVirusScan")
        #expect(String(decoding: call.body, as: UTF8.self) == #"{"Comment":"scan it","ScanType":"Full"}"#)
        try await restarted.drain().get()
        try await store.close()
    }

    @Test("configuration knows exactly the route table's APIs, and quota.apis reaches each API's ledger")
    func configurationNamesTheRoutes() async throws {
        #expect(Set(ConfigurationKey.apiOverrides.compactMap(\.apiName)) == Set(Route.apis.map(\.name)))
        var configuration = GatewayConfiguration(auth: .init(tokenFile: "/run/mdegate/token"))
        configuration.quota.apis = ["isolate": [Limit(calls: 2, window: .seconds(1))]]
        let settings = Gateway.Settings(configuration)
        let gateway = scriptedGateway(settings, store: InMemoryStore(), upstream: ScriptedUpstream())
        try await gateway.start()
        let status = await gateway.status()
        #expect(status.apis.first { $0.name == "isolate" }?.limits.map(\.spec) == ["2/1s"])
        #expect(status.apis.first { $0.name == "cancel" }?.limits.map(\.spec) == ["100/1m", "1500/1h"])
    }
}
