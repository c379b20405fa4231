import Foundation
import MDEGateTransport
import Testing

/// The simulator's machine-action family, spoken to directly: every route, the limits per API,
/// the small action state machine, the listing, faults per API and the counters.
@Suite("Simulator: the machine-action family", .timeLimit(.minutes(HarnessTime.suiteMinutes)))
struct SimulatorActionTests {
    /// Every POST on a machine: the path segment (in Microsoft's spelling), its body, the API name
    /// and the MachineAction it creates (type, scope).
    static let machineRoutes: [(segment: String, api: String, body: JSON, type: String, scope: String?)] = [
        ("isolate", "isolate", ["Comment": "c-isolate", "IsolationType": "Selective"], "Isolate", "Selective"),
        ("unisolate", "unisolate", ["Comment": "c-unisolate"], "Unisolate", nil),
        ("runAntiVirusScan", "run_antivirus_scan", ["Comment": "c-scan", "ScanType": "Quick"], "RunAntiVirusScan", "Quick"),
        ("collectInvestigationPackage", "collect_investigation_package", ["Comment": "c-collect"], "CollectInvestigationPackage", nil),
        ("restrictCodeExecution", "restrict_code_execution", ["Comment": "c-restrict"], "RestrictCodeExecution", nil),
        ("unrestrictCodeExecution", "unrestrict_code_execution", ["Comment": "c-unrestrict"], "UnrestrictCodeExecution", nil),
        ("StopAndQuarantineFile", "stop_and_quarantine_file", ["Comment": "c-quarantine", "Sha1": .string(sha1)], "StopAndQuarantineFile", nil),
    ]

    static let sha1 = "87662bc3d60e4200ceaf7aae249d1c343f4b83c9"

    // MARK: Routes and bodies

    @Test("every POST on a machine answers 201 with a new Pending MachineAction of its type; get, list and cancel answer 200")
    func everyRoute() async throws {
        try await withActionSimulator { simulator in
            let machine = simulatorMachineID()
            var created: [String] = []
            for route in Self.machineRoutes {
                let answer = try await simulator.machineAction(route.segment, machine: machine.uppercased(), body: route.body)
                #expect(answer.status == 201, "\(route.segment): \(answer.summary)")
                let action = try answer.json()
                #expect(action["type"]?.string == route.type, "\(action)")
                #expect(action["status"]?.string == "Pending", "\(action)")
                #expect(action["machineId"]?.string == machine, "machine ids come back lowercase: \(action)")
                #expect(action["scope"] == route.scope.map { .string($0) } ?? .null, "\(action)")
                #expect(action["requestor"]?.string == simulator.clientId, "\(action)")
                #expect(action["requestorComment"] == route.body["Comment"], "\(action)")
                #expect(action["computerDnsName"]?.string?.isEmpty == false, "\(action)")
                #expect(action["@odata.context"]?.string?.hasSuffix("#MachineActions/$entity") == true, "\(action)")
                for field in ["cancellationRequestor", "cancellationComment", "cancellationDateTimeUtc"] {
                    #expect(action[field] == .null, "\(field): \(action)")
                }
                let creation = try #require(action["creationDateTimeUtc"]?.string)
                #expect(action["lastUpdateDateTimeUtc"]?.string == creation, "\(action)")
                #expect(creation.hasSuffix("Z") && creation.count == 28, "MDE's time format: \(creation)")
                if route.api == "stop_and_quarantine_file" {
                    #expect(action["relatedFileInfo"] == ["fileIdentifier": .string(Self.sha1), "fileIdentifierType": "Sha1"], "\(action)")
                } else {
                    #expect(action["relatedFileInfo"] == .null, "\(action)")
                }
                let id = try #require(action["id"]?.string)
                #expect(UUID(uuidString: id) != nil, "\(id)")
                #expect(!created.contains(id), "a fresh id")
                created.append(id)
            }

            // Fixed segments compare case-insensitively, as ASP.NET's routing does.
            let mixedCase = try await simulator.call(
                method: "POST", path: "/API/Machines/\(simulatorMachineID())/RUNANTIVIRUSSCAN", body: ["Comment": "c", "ScanType": "full"])
            #expect(mixedCase.status == 201, "\(mixedCase.summary)")
            #expect(try mixedCase.json()["scope"]?.string == "Full", "values are stored in Microsoft's spelling: \(mixedCase.summary)")

            let read = try await simulator.call(method: "GET", path: "/api/MachineActions/\(created[0].uppercased())")
            #expect(read.status == 200, "\(read.summary)")
            #expect(try read.json()["id"]?.string == created[0])
            #expect(try read.json()["type"]?.string == "Isolate")

            let listing = try await simulator.listMachineActions()
            #expect(listing.status == 200, "\(listing.summary)")
            #expect(try listing.json()["@odata.context"]?.string?.hasSuffix("#MachineActions") == true, "\(listing.summary)")
            #expect(try listing.json()["value"]?[0]?["@odata.context"] == nil, "elements carry no context: \(listing.summary)")
            let listed = try SimulatorProcess.listedIDs(listing)
            #expect(Array(listed.dropFirst()) == created.reversed(), "newest first")

            let cancel = try await simulator.call(
                method: "POST", path: "/api/machineactions/\(created[1])/cancel", body: ["Comment": "called off"])
            #expect(cancel.status == 200, "\(cancel.summary)")
            #expect(try cancel.json()["status"]?.string == "Cancelled", "\(cancel.summary)")

            let stats = try await simulator.stats()
            for route in Self.machineRoutes {
                // The mixed-case call was a second scan.
                let calls = route.api == "run_antivirus_scan" ? 2 : 1
                #expect(stats.api(route.api).arrivals == calls, "\(route.api): \(stats.api(route.api))")
                #expect(stats.api(route.api).answered(201) == calls, "\(route.api): \(stats.api(route.api))")
            }
            #expect(stats.api("get_machine_action").answered(200) == 1, "\(stats.api("get_machine_action"))")
            #expect(stats.api("list_machine_actions").answered(200) == 1, "\(stats.api("list_machine_actions"))")
            #expect(stats.api("cancel").answered(200) == 1, "\(stats.api("cancel"))")
            #expect(stats.storedActions == 8, "\(stats)")
        }
    }

    @Test("bad ids, bodies and queries answer 400 in the upstream's error shape; unknown ids 404; a missing token 401; every one counts")
    func validation() async throws {
        try await withActionSimulator { simulator in
            let machine = simulatorMachineID()
            let refusals: [(method: String, path: String, body: JSON?, status: Int, code: String)] = [
                ("POST", "/api/machines/not-a-machine/isolate", ["Comment": "c", "IsolationType": "Full"], 400, "BadRequest"),
                ("POST", "/api/machines/\(machine.dropLast())/unisolate", ["Comment": "c"], 400, "BadRequest"),
                ("POST", "/api/machines/\(machine)/isolate", ["Comment": "c"], 400, "InvalidRequestBody"),
                ("POST", "/api/machines/\(machine)/isolate", ["Comment": "c", "IsolationType": "Partial"], 400, "InvalidRequestBody"),
                ("POST", "/api/machines/\(machine)/isolate", ["comment": "c", "IsolationType": "Full"], 400, "InvalidRequestBody"),
                ("POST", "/api/machines/\(machine)/runAntiVirusScan", ["Comment": "c", "ScanType": "Deep"], 400, "InvalidRequestBody"),
                ("POST", "/api/machines/\(machine)/StopAndQuarantineFile", ["Comment": "c", "Sha1": "abc"], 400, "InvalidRequestBody"),
                ("POST", "/api/machines/\(machine)/collectInvestigationPackage", nil, 400, "InvalidRequestBody"),
                ("GET", "/api/machineactions/not-a-guid", nil, 400, "BadRequest"),
                ("GET", "/api/machineactions/\(machineActionID())", nil, 404, "ResourceNotFound"),
                ("POST", "/api/machines/\(unknownMachineID())/isolate", ["Comment": "c", "IsolationType": "Full"], 404, "ResourceNotFound"),
                ("POST", "/api/machineactions/\(unknownMachineActionID())/cancel", ["Comment": "c"], 404, "ResourceNotFound"),
            ]
            for refusal in refusals {
                let answer = try await simulator.call(method: refusal.method, path: refusal.path, body: refusal.body)
                #expect(answer.status == refusal.status, "\(refusal.method) \(refusal.path): \(answer.summary)")
                #expect(answer.errorCode == refusal.code, "\(refusal.method) \(refusal.path): \(answer.summary)")
                let error = try answer.json()["error"]
                #expect(error?["message"]?.string?.isEmpty == false, "\(answer.summary)")
                #expect(error?["target"]?.string.flatMap { UUID(uuidString: $0) } != nil, "\(answer.summary)")
            }

            // A cancel of an id the simulator never created keeps its original contract.
            let neverCreated = try await simulator.cancel(machineActionID())
            #expect(neverCreated.status == 200, "\(neverCreated.summary)")
            #expect(try neverCreated.json()["status"]?.string == "Cancelled", "\(neverCreated.summary)")

            let unauthenticated = try await simulator.isolate(machine, comment: "no token").status
            #expect(unauthenticated == 201, "the token is sent by default")
            let noToken = try await simulator.call(method: "GET", path: "/api/machineactions", bearer: "")
            #expect(noToken.status == 401, "\(noToken.summary)")
            let wrongToken = try await simulator.machineAction(
                "unisolate", machine: machine, body: ["Comment": "c"], bearer: "not-the-token")
            #expect(wrongToken.status == 401, "\(wrongToken.summary)")

            // A wrong method names no API's call: 405, not counted.
            let wrongMethod = try await simulator.call(method: "GET", path: "/api/machines/\(machine)/isolate")
            #expect(wrongMethod.status == 405, "\(wrongMethod.summary)")
            #expect(wrongMethod.header("allow") == "POST", "\(wrongMethod.headers)")

            let stats = try await simulator.stats()
            #expect(stats.api("isolate").arrivals == 6, "4 refused + 1 not found + 1 created: \(stats.api("isolate"))")
            #expect(stats.api("isolate").answered(400) == 4, "\(stats.api("isolate"))")
            #expect(stats.api("unisolate").arrivals == 2, "\(stats.api("unisolate"))")
            #expect(stats.api("unisolate").answered(401) == 1, "\(stats.api("unisolate"))")
            #expect(stats.api("list_machine_actions").answered(401) == 1, "\(stats.api("list_machine_actions"))")
            #expect(stats.api("get_machine_action").arrivals == 2, "\(stats.api("get_machine_action"))")
            #expect(stats.arrivals == stats.byApi.values.map(\.arrivals).reduce(0, +), "\(stats)")
            #expect(stats.arrivals == refusals.count + 4, "every call but the 405: \(stats)")
        }
    }

    // MARK: Limits per API

    @Test("each API has its own arrival log: a violation on isolate leaves cancel's quota alone; --api-limits overrides --limit")
    func limitsPerAPI() async throws {
        try await withActionSimulator(["--limit", "3/1m", "--api-limits", "isolate=1/1m", "--api-limits", "get_machine_action=none"]) { simulator in
            let first = try await simulator.isolate(simulatorMachineID())
            #expect(first.status == 201, "\(first.summary)")
            let second = try await simulator.isolate(simulatorMachineID())
            #expect(second.status == 429, "isolate=1/1m: \(second.summary)")
            #expect(second.errorCode == "TooManyRequests")
            #expect(second.header("retry-after") == "1", "\(second.headers)")
            #expect(second.header("x-sim-violated-limit") == "1/1m", "\(second.headers)")

            for index in 0..<3 {
                let cancel = try await simulator.cancel(machineActionID())
                #expect(cancel.status == 200, "cancel \(index) has --limit 3/1m to itself: \(cancel.summary)")
            }
            let fourth = try await simulator.cancel(machineActionID())
            #expect(fourth.status == 429, "\(fourth.summary)")
            #expect(fourth.header("x-sim-violated-limit") == "3/1m", "\(fourth.headers)")

            // Unauthenticated arrivals spend the quota too.
            for _ in 0..<3 {
                let refused = try await simulator.machineAction(
                    "unisolate", machine: simulatorMachineID(), body: ["Comment": "c"], bearer: "wrong")
                #expect(refused.status == 401, "\(refused.summary)")
            }
            let afterRefusals = try await simulator.machineAction("unisolate", machine: simulatorMachineID(), body: ["Comment": "c"])
            #expect(afterRefusals.status == 429, "three 401s spent unisolate's 3/1m: \(afterRefusals.summary)")

            // get_machine_action=none: unlimited.
            for _ in 0..<5 {
                let read = try await simulator.machineActionState(machineActionID())
                #expect(read.status == 404, "\(read.summary)")
            }

            let stats = try await simulator.stats()
            #expect(stats.api("isolate").violations == 1, "\(stats.api("isolate"))")
            #expect(stats.api("cancel").violations == 1, "\(stats.api("cancel"))")
            #expect(stats.api("cancel").arrivals == 4, "\(stats.api("cancel"))")
            #expect(stats.api("unisolate").violations == 1, "\(stats.api("unisolate"))")
            #expect(stats.api("get_machine_action").violations == 0, "\(stats.api("get_machine_action"))")
            #expect(stats.violations == 3, "the total is the sum: \(stats)")
            #expect(stats.answered(429) == 3, "\(stats)")

            // A reset gives every API its whole quota back and zeroes byApi.
            try await simulator.reset()
            let zeroed = try await simulator.stats()
            #expect(zeroed.byApi.values.allSatisfy { $0 == SimulatorAPIStats() }, "\(zeroed.byApi)")
            #expect(zeroed.arrivals == 0 && zeroed.violations == 0, "\(zeroed)")
            #expect(try await simulator.isolate(simulatorMachineID()).status == 201)
        }
    }

    @Test("--api-limits refuses an unknown API name, naming the known ones, and a second value for one API")
    func apiLimitsRefused() async throws {
        try await sharingTheMachine {
            for (arguments, expected) in [
                (["--api-limits", "isolate_machine=2/1s"], ["isolate_machine", "stop_and_quarantine_file"]),
                (["--api-limits", "isolate=2/1s", "--api-limits", "isolate=10/1m"], ["isolate twice"]),
                (["--api-limits", "isolate=2/1x"], ["2/1x"]),
                (["--fault-apis", "cancel,bogus"], ["--fault-apis", "bogus"]),
            ] {
                let process = try await TestProcess(
                    name: "mde-simulator", executable: Binaries.simulator,
                    arguments: ["--port", "0"] + arguments, environment: TestProcess.environment())
                let end = try await process.waitForExit(timeout: .seconds(30))
                #expect(end != .exited(0), "\(arguments)")
                let stderr = process.lines(.stderr).joined(separator: "\n")
                for text in expected {
                    #expect(stderr.contains(text), "\(arguments): \(stderr)")
                }
            }
        }
    }

    // MARK: The action state machine

    @Test("a created action goes Pending, InProgress, Succeeded on reads; a finished one cannot be cancelled and no longer blocks a new one")
    func stateMachine() async throws {
        // InProgress lasts 4 s: wide enough that a test starved for a moment (a busy suite on 2
        // cores) still sees it, and the second isolate still finds the first one active. A
        // sanitizer build's simulator answers slower: the duration grows with HarnessTime.scale.
        try await withActionSimulator(["--action-duration", "\(8 * HarnessTime.scale)s"]) { simulator in
            let machine = simulatorMachineID()
            let created = try await simulator.isolate(machine)
            #expect(created.status == 201, "\(created.summary)")
            let action = try created.json()
            let id = try #require(action["id"]?.string)
            let creation = try #require(action["creationDateTimeUtc"]?.string)
            #expect(action["status"]?.string == "Pending", "\(action)")

            let started = try await eventually("the action to leave Pending", { try await simulator.machineActionState(id).json() }) {
                $0["status"]?.string != "Pending"
            }
            #expect(started["status"]?.string == "InProgress", "an action is InProgress for its second half: \(started)")
            let startedAt = try #require(started["lastUpdateDateTimeUtc"]?.string)
            #expect(startedAt > creation, "\(started)")
            #expect(started["creationDateTimeUtc"]?.string == creation, "\(started)")

            let blocked = try await simulator.isolate(machine)
            #expect(blocked.status == 400, "\(blocked.summary)")
            #expect(blocked.errorCode == "ActiveRequestAlreadyExists", "\(blocked.summary)")

            let finished = try await eventually("the action to succeed", { try await simulator.machineActionState(id).json() }) {
                $0["status"]?.string != "InProgress"
            }
            #expect(finished["status"]?.string == "Succeeded", "\(finished)")
            #expect(try #require(finished["lastUpdateDateTimeUtc"]?.string) > startedAt, "\(finished)")

            let late = try await simulator.call(method: "POST", path: "/api/machineactions/\(id)/cancel", body: ["Comment": "too late"])
            #expect(late.status == 400, "\(late.summary)")
            #expect(late.errorCode == "BadRequest", "\(late.summary)")
            #expect(try await simulator.machineActionState(id).json()["status"]?.string == "Succeeded")

            let again = try await simulator.isolate(machine)
            #expect(again.status == 201, "the first isolate finished: \(again.summary)")
            #expect(try again.json()["id"]?.string != id)
        }
    }

    @Test("a second action of a type on a machine while the first is pending answers 400 ActiveRequestAlreadyExists; other machines, types and files do not")
    func activeRequestAlreadyExists() async throws {
        try await withActionSimulator { simulator in
            let machine = simulatorMachineID()
            let first = try await simulator.isolate(machine)
            #expect(first.status == 201, "\(first.summary)")
            let firstID = try #require(try first.json()["id"]?.string)

            let second = try await simulator.isolate(machine.uppercased(), type: "Selective")
            #expect(second.status == 400, "\(second.summary)")
            #expect(second.errorCode == "ActiveRequestAlreadyExists", "\(second.summary)")
            #expect(try second.json()["error"]?["message"]?.string?.contains(firstID) == true, "\(second.summary)")

            #expect(try await simulator.isolate(simulatorMachineID()).status == 201, "another machine")
            let scan = try await simulator.machineAction("runAntiVirusScan", machine: machine, body: ["Comment": "c", "ScanType": "Full"])
            #expect(scan.status == 201, "another type: \(scan.summary)")

            let otherSha1 = String(Self.sha1.reversed())
            let quarantine: (String) async throws -> TransportResponse = { sha1 in
                try await simulator.machineAction("StopAndQuarantineFile", machine: machine, body: ["Comment": "c", "Sha1": .string(sha1)])
            }
            #expect(try await quarantine(Self.sha1).status == 201)
            #expect(try await quarantine(Self.sha1.uppercased()).errorCode == "ActiveRequestAlreadyExists", "the same file")
            #expect(try await quarantine(otherSha1).status == 201, "another file")

            // Cancelled, the first isolate no longer blocks.
            let cancel = try await simulator.call(method: "POST", path: "/api/machineactions/\(firstID)/cancel", body: ["Comment": "c"])
            #expect(cancel.status == 200, "\(cancel.summary)")
            #expect(try await simulator.isolate(machine).status == 201)

            let stats = try await simulator.stats()
            #expect(stats.api("isolate").answered(400) == 1, "\(stats.api("isolate"))")
            #expect(stats.api("stop_and_quarantine_file").answered(400) == 1, "\(stats.api("stop_and_quarantine_file"))")
            #expect(stats.arrivals(for: machine) == 7, "arrivalsById counts machine ids, lowercased: \(stats.arrivalsById)")
            #expect(stats.arrivals(for: firstID) == 1, "and machine action ids: \(stats.arrivalsById)")
        }
    }

    @Test("--allow-duplicate-actions creates a second pending isolate of a machine instead of refusing it")
    func duplicateActionsAllowed() async throws {
        try await withActionSimulator(["--allow-duplicate-actions"]) { simulator in
            let machine = simulatorMachineID()
            let first = try await simulator.isolate(machine)
            let second = try await simulator.isolate(machine)
            #expect(first.status == 201 && second.status == 201, "\(second.summary)")
            #expect(try first.json()["id"] != second.json()["id"])
            let listing = try await simulator.listMachineActions([("$filter", "machineId eq '\(machine)' and status eq 'Pending'")])
            #expect(try SimulatorProcess.listedIDs(listing).count == 2, "\(listing.summary)")
        }
    }

    @Test("a cancel of a created action makes it Cancelled with the cancellation fields; GET and the listing show it; a second cancel answers 400")
    func cancelCreatedAction() async throws {
        try await withActionSimulator { simulator in
            let created = try await simulator.machineAction(
                "collectInvestigationPackage", machine: simulatorMachineID(), body: ["Comment": "evidence"])
            let id = try #require(try created.json()["id"]?.string)

            let cancel = try await simulator.call(
                method: "POST", path: "/api/machineactions/\(id.uppercased())/cancel", body: ["Comment": "not needed"])
            #expect(cancel.status == 200, "\(cancel.summary)")
            let cancelled = try cancel.json()
            #expect(cancelled["id"]?.string == id, "\(cancelled)")
            #expect(cancelled["type"]?.string == "CollectInvestigationPackage", "the created action, not a derived one: \(cancelled)")
            #expect(cancelled["requestorComment"]?.string == "evidence", "\(cancelled)")
            #expect(cancelled["status"]?.string == "Cancelled", "\(cancelled)")
            #expect(cancelled["cancellationRequestor"]?.string == simulator.clientId, "\(cancelled)")
            #expect(cancelled["cancellationComment"]?.string == "not needed", "\(cancelled)")
            let at = try #require(cancelled["cancellationDateTimeUtc"]?.string, "\(cancelled)")
            #expect(cancelled["lastUpdateDateTimeUtc"]?.string == at, "\(cancelled)")

            let read = try await simulator.machineActionState(id).json()
            #expect(read["status"]?.string == "Cancelled", "\(read)")
            #expect(read["cancellationComment"]?.string == "not needed", "\(read)")
            #expect(read["cancellationDateTimeUtc"]?.string == at, "\(read)")

            let listed = try await simulator.listMachineActions([("$filter", "status eq 'Cancelled'")])
            #expect(try SimulatorProcess.listedIDs(listed) == [id], "\(listed.summary)")

            let again = try await simulator.call(method: "POST", path: "/api/machineactions/\(id)/cancel", body: ["Comment": "twice"])
            #expect(again.status == 400, "\(again.summary)")
            #expect(again.errorCode == "BadRequest", "\(again.summary)")
            #expect(try await simulator.machineActionState(id).json()["cancellationComment"]?.string == "not needed")
        }
    }

    // MARK: The listing

    @Test("the listing is newest first and takes $filter on status, machineId and type joined with and, $top and $skip; anything else is 400")
    func listing() async throws {
        try await withActionSimulator { simulator in
            let (one, two) = (simulatorMachineID(), simulatorMachineID())
            var ids: [String] = []
            for (segment, machine, body) in [
                ("isolate", one, ["Comment": "c", "IsolationType": "Full"] as JSON),
                ("runAntiVirusScan", one, ["Comment": "c", "ScanType": "Quick"]),
                ("isolate", two, ["Comment": "c", "IsolationType": "Full"]),
                ("collectInvestigationPackage", two, ["Comment": "c"]),
            ] {
                let answer = try await simulator.machineAction(segment, machine: machine, body: body)
                ids.append(try #require(try answer.json()["id"]?.string, "\(answer.summary)"))
            }
            let cancel = try await simulator.call(method: "POST", path: "/api/machineactions/\(ids[3])/cancel", body: ["Comment": "c"])
            #expect(cancel.status == 200, "\(cancel.summary)")

            let cases: [(options: [(name: String, value: String)], expected: [String])] = [
                ([], ids.reversed()),
                ([("$filter", "machineId eq '\(one)'")], [ids[1], ids[0]]),
                ([("$filter", "machineId eq '\(two.uppercased())'")], [ids[3], ids[2]]),
                ([("$filter", "type eq 'Isolate'")], [ids[2], ids[0]]),
                ([("$filter", "type eq 'Isolate' and machineId eq '\(two)'")], [ids[2]]),
                ([("$filter", "status eq 'Pending'")], [ids[2], ids[1], ids[0]]),
                ([("$filter", "status eq 'Cancelled' and type eq 'Isolate'")], []),
                ([("$filter", "  status eq 'Cancelled'  ")], [ids[3]]),
                ([("$top", "2")], [ids[3], ids[2]]),
                ([("$skip", "1"), ("$top", "2")], [ids[2], ids[1]]),
                ([("$filter", "status eq 'Pending'"), ("$skip", "2")], [ids[0]]),
                ([("$top", "0")], []),
                ([("unrelated", "x")], ids.reversed()),
            ]
            for (options, expected) in cases {
                let answer = try await simulator.listMachineActions(options)
                #expect(try SimulatorProcess.listedIDs(answer) == expected, "\(options): \(answer.summary)")
            }

            for options: [(name: String, value: String)] in [
                [("$filter", "status ne 'Pending'")],
                [("$filter", "computerDnsName eq 'x'")],
                [("$filter", "status eq Pending")],
                [("$filter", "status eq 'Pending' or type eq 'Isolate'")],
                [("$filter", "status eq 'Pending"),],
                [("$top", "-1")],
                [("$top", "ten")],
                [("$top", "10001")],
                [("$skip", "x")],
                [("$orderby", "creationDateTimeUtc desc")],
            ] {
                let answer = try await simulator.listMachineActions(options)
                #expect(answer.status == 400, "\(options): \(answer.summary)")
                #expect(answer.errorCode == "BadRequest", "\(options): \(answer.summary)")
            }
        }
    }

    @Test("at most --max-actions actions are kept: the oldest is forgotten")
    func boundedMemory() async throws {
        try await withActionSimulator(["--max-actions", "3"]) { simulator in
            var ids: [String] = []
            for _ in 0..<4 {
                let answer = try await simulator.isolate(simulatorMachineID())
                ids.append(try #require(try answer.json()["id"]?.string, "\(answer.summary)"))
            }
            #expect(try await simulator.machineActionState(ids[0]).status == 404, "the oldest is gone")
            #expect(try await simulator.machineActionState(ids[1]).status == 200)
            #expect(try SimulatorProcess.listedIDs(try await simulator.listMachineActions()) == ids.dropFirst().reversed())
            #expect(try await simulator.stats().storedActions == 3)
        }
    }

    // MARK: Faults per API

    @Test("faults with apis apply to those APIs only: one-shot 429s are not consumed by others, rates and drops hit only them")
    func faultsPerAPI() async throws {
        try await withActionSimulator { simulator in
            let machine = simulatorMachineID()
            try await simulator.setFaults(["next429": ["count": 1, "retryAfter": 7], "apis": ["isolate"]])
            let cancel = try await simulator.cancel(machineActionID())
            #expect(cancel.status == 200, "cancel is not in apis: \(cancel.summary)")
            let throttled = try await simulator.isolate(machine)
            #expect(throttled.status == 429, "\(throttled.summary)")
            #expect(throttled.header("retry-after") == "7", "\(throttled.headers)")
            let created = try await simulator.isolate(machine)
            #expect(created.status == 201, "one 429 only: \(created.summary)")
            let id = try #require(try created.json()["id"]?.string)

            try await simulator.setFaults(["fail503Rate": 1, "apis": ["get_machine_action", "unisolate"]])
            let settings = try await simulator.client.get("/_sim/faults").json()
            #expect(settings["apis"] == ["get_machine_action", "unisolate"], "\(settings)")
            #expect(try await simulator.machineActionState(id).status == 503)
            #expect(try await simulator.machineAction("unisolate", machine: machine, body: ["Comment": "c"]).status == 503)
            #expect(try await simulator.listMachineActions().status == 200)
            #expect(try await simulator.cancel(machineActionID()).status == 200)

            try await simulator.setFaults(["fail503Rate": 0, "dropRate": 1, "apis": ["restrict_code_execution"]])
            await #expect(throws: (any Error).self) {
                try await simulator.machineAction("restrictCodeExecution", machine: machine, body: ["Comment": "c"])
            }
            #expect(try await simulator.cancel(machineActionID()).status == 200)

            // null: every API again.
            try await simulator.setFaults(["dropRate": 0, "fail500Rate": 1, "apis": nil])
            #expect(try await simulator.client.get("/_sim/faults").json()["apis"] == .null)
            #expect(try await simulator.cancel(machineActionID()).status == 500)
            #expect(try await simulator.listMachineActions().status == 500)

            for bad: JSON in [["apis": ["bogus"]], ["apis": []], ["apis": "isolate"]] {
                let refused = try await simulator.client.post("/_sim/faults", json: bad)
                #expect(refused.status == 400, "\(bad): \(refused.summary)")
            }
            #expect(try await simulator.client.get("/_sim/faults").json()["fail500Rate"]?.double == 1, "refused updates change nothing")

            let stats = try await simulator.stats()
            #expect(stats.api("isolate").answered(429) == 1 && stats.api("isolate").answered(201) == 1, "\(stats.api("isolate"))")
            #expect(stats.api("get_machine_action").answered(503) == 1, "\(stats.api("get_machine_action"))")
            #expect(stats.api("restrict_code_execution").dropped >= 1, "\(stats.api("restrict_code_execution"))")
            #expect(
                stats.api("restrict_code_execution").dropped == stats.api("restrict_code_execution").arrivals,
                "\(stats.api("restrict_code_execution"))")
            #expect(stats.dropped == stats.api("restrict_code_execution").dropped, "\(stats)")
            #expect(stats.api("cancel").answered(200) == 3 && stats.api("cancel").answered(500) == 1, "\(stats.api("cancel"))")
        }
    }

    @Test("--fault-apis limits the command line's faults to those APIs")
    func faultAPIsFlag() async throws {
        try await withActionSimulator(["--fail-503-rate", "1", "--fault-apis", "isolate,run_antivirus_scan"]) { simulator in
            let isolate = try await simulator.isolate(simulatorMachineID())
            #expect(isolate.status == 503, "\(isolate.summary)")
            let cancel = try await simulator.cancel(machineActionID())
            #expect(cancel.status == 200, "\(cancel.summary)")
            let settings = try await simulator.client.get("/_sim/faults").json()
            #expect(settings["apis"] == ["isolate", "run_antivirus_scan"], "\(settings)")
        }
    }

    // MARK: Counters

    @Test("the top-level counters are totals over every API; reset keeps created actions unless asked to forget them")
    func statsAndReset() async throws {
        try await withActionSimulator { simulator in
            let machine = simulatorMachineID()
            let id = try #require(try await simulator.isolate(machine).json()["id"]?.string)
            _ = try await simulator.machineActionState(id.uppercased())
            _ = try await simulator.cancel(machineActionID())
            _ = try await simulator.listMachineActions()

            let stats = try await simulator.stats()
            #expect(stats.arrivals == 4, "\(stats)")
            #expect(stats.arrivalTimesNs?.count == 4, "\(stats)")
            #expect(stats.answered == ["200": 3, "201": 1], "\(stats)")
            var summed: [String: Int] = [:]
            for api in stats.byApi.values { summed.merge(api.answered, uniquingKeysWith: +) }
            #expect(summed == stats.answered, "\(stats.byApi)")
            #expect(stats.arrivals(for: machine) == 1 && stats.arrivals(for: id) == 1, "\(stats.arrivalsById)")
            #expect(stats.arrivalsById.count == 3, "the listing has no id: \(stats.arrivalsById)")
            #expect(Set(stats.byApi.keys) == Set(Self.machineRoutes.map(\.api) + ["cancel", "get_machine_action", "list_machine_actions"]))
            #expect(stats.maxInFlight >= 1 && stats.api("isolate").maxInFlight == 1, "\(stats)")

            try await simulator.reset()
            let reset = try await simulator.stats()
            #expect(reset.arrivals == 0 && reset.answered.isEmpty && reset.arrivalsById.isEmpty, "\(reset)")
            #expect(reset.storedActions == 1, "\(reset)")
            #expect(try await simulator.machineActionState(id).status == 200, "created actions stay")
            #expect(try await simulator.isolate(machine).errorCode == "ActiveRequestAlreadyExists", "and still block")

            try await simulator.reset(forgetActions: true)
            #expect(try await simulator.stats().storedActions == 0)
            #expect(try await simulator.machineActionState(id).status == 404, "forgotten")
            #expect(try await simulator.isolate(machine).status == 201)
        }
    }
}

// MARK: Helpers

/// Runs `body` with a simulator started with `arguments` (plain HTTP), in its share of the machine.
private func withActionSimulator<T>(
    _ arguments: [String] = [], _ body: (SimulatorProcess) async throws -> T
) async throws -> T {
    try await sharingTheMachine {
        let simulator = try await SimulatorProcess(arguments: arguments + ["--quiet"])
        do {
            let value = try await body(simulator)
            await simulator.stop()
            return value
        } catch {
            FileHandle.standardError.write(Data((simulator.process.diagnostics() + "\n").utf8))
            await simulator.stop()
            throw error
        }
    }
}
