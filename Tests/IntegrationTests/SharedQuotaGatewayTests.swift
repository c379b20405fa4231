import Foundation
import Logging
import MDEGateTransport
import PostgresNIO
import Testing

/// Several `mdegate serve` processes sharing one quota in a real PostgreSQL server, judged by one
/// strict simulator: the quota holds across hosts, a 429 pauses them all, and a database or a
/// host that goes away loses nothing and never overspends.
@Suite("Shared quota: several gateways, one ledger in PostgreSQL", .serialized, .timeLimit(.minutes(HarnessTime.suiteMinutes)))
struct SharedQuotaGatewayTests {
    static let strict = ["--limit", "5/1s", "--limit", "12/4s", "--retry-after", "1"]
    static let limits = [(calls: 5, seconds: 1.0), (calls: 12, seconds: 4.0)]

    /// The most arrivals any window of `seconds` held, ending at an arrival (the simulator's rule).
    static func fullestWindow(_ times: [Int64], seconds: Double) -> Int {
        let sorted = times.sorted()
        let span = Int64(seconds * 1e9)
        var fullest = 0
        var first = 0
        for (index, end) in sorted.enumerated() {
            while sorted[first] <= end - span { first += 1 }
            fullest = max(fullest, index - first + 1)
        }
        return fullest
    }

    static func expectWithinLimits(_ stats: SimulatorStats, sourceLocation: SourceLocation = #_sourceLocation) {
        #expect(stats.violations == 0, "the upstream saw the quota exceeded: \(stats)", sourceLocation: sourceLocation)
        let times = stats.arrivalTimesNs ?? []
        for limit in limits {
            let fullest = fullestWindow(times, seconds: limit.seconds)
            #expect(fullest <= limit.calls, "a window of \(limit.seconds) s held \(fullest) arrivals", sourceLocation: sourceLocation)
        }
    }

    /// Admits `count` cancels with `Prefer: respond-async`, dealt over the hosts in turn.
    static func admit(_ count: Int, to rig: SharedRig, hosts: [Int]) async throws -> [(host: Int, id: String, target: String)] {
        var admitted: [(host: Int, id: String, target: String)] = []
        for index in 0..<count {
            let host = hosts[index % hosts.count]
            let target = machineActionID()
            let answer = try await rig.gateway(host).client.cancel(target, client: "playbook", prefer: "respond-async")
            #expect(answer.status == 202, "\(answer.summary)")
            admitted.append((host, try #require(try answer.json()["id"]?.string), target))
        }
        return admitted
    }

    static func sharedQuota(_ gateway: GatewayProcess) async throws -> JSON {
        try #require(try await gateway.client.status()["sharedQuota"])
    }

    @Test("three hosts under 5/1s + 12/4s: a burst of 36 over their sockets is all done, 0 violations, no window over N")
    func burstOverThreeHosts() async throws {
        try await withSharedRig(simulator: Self.strict) { rig in
            let answers = try await withThrowingTaskGroup(of: TransportResponse.self) { group in
                for index in 0..<36 {
                    let socket = rig.gateway(index % 3).socketPath
                    group.addTask {
                        let client = try GatewayClient(socketPath: socket)
                        defer { client.shutdown() }
                        return try await client.cancel(machineActionID(), client: "burst")
                    }
                }
                return try await group.reduce(into: []) { $0.append($1) }
            }
            #expect(answers.count == 36)
            #expect(answers.allSatisfy { $0.status == 200 }, "\(answers.filter { $0.status != 200 }.map(\.summary))")
            let stats = try await rig.simulator.stats()
            Self.expectWithinLimits(stats)
            #expect(stats.arrivals == 36, "one attempt per request: \(stats)")

            // Every host spent some of the quota, and each host's status shows the shared use.
            let shared = try await Self.sharedQuota(rig.gateway(0))
            #expect(shared["reachable"]?.bool == true, "\(shared)")
            #expect(shared["host"]?.string == "host-a")
            let usage = try #require(shared["usage"]?.array, "\(shared)")
            let window = try #require(usage.first { $0["spec"]?.string == "12/4s" }, "\(usage)")
            let byHost = window["hosts"]?.array ?? []
            #expect(window["used"]?.int == byHost.compactMap { $0["used"]?.int }.reduce(0, +))
            #expect((window["used"]?.int ?? 99) <= 12, "\(window)")
            let ledger = try await Self.ledger(rig.postgres)
            #expect(Set(ledger.map(\.host)) == ["host-a", "host-b", "host-c"], "every host took slots from the one ledger")
            if stats.violations > 0 {
                let arrivals = (stats.arrivalTimesNs ?? []).sorted()
                let start = min(arrivals.first ?? 0, ledger.first?.at ?? 0)
                Issue.record(
                    "arrivals (ms): \(arrivals.map { Double($0 - start) / 1e6 })\nledger (ms): \(ledger.map { "\($0.host) \(Double($0.at - start) / 1e6)" })")
            }
            let rendered = try await rig.gateway(1).cli(["status"])
            #expect(rendered.exitCode == 0, "\(rendered)")
            #expect(rendered.stdout.contains("SHARED QUOTA"), "\(rendered.stdout)")
            #expect(rendered.stdout.contains("this host \"host-b\": database reachable"), "\(rendered.stdout)")
        }
    }

    @Test("a 429 seen by one host pauses the others: their requests reach the upstream only after the pause")
    func throttleIsShared() async throws {
        var options = GatewayOptions()
        options.limits = ["100/1m"]
        try await withSharedRig(simulator: ["--limit", "100/1m"], gateway: options) { rig in
            try await rig.simulator.setFaults(["next429": ["count": 1, "retryAfter": 3]])
            let first = try await Self.admit(1, to: rig, hosts: [0])
            let simulator = rig.simulator
            _ = try await eventually("the upstream to answer 429", { try await simulator.stats() }) { $0.answered(429) == 1 }
            let hostA = rig.gateway(0).client
            let pausedA = try await eventually("host-a to pause after its 429", { try await hostA.status() }) {
                $0["pausedUntil"]?.string != nil
            }
            let until = try #require(pausedA["pausedUntil"]?.string.flatMap(Self.date))

            // The other hosts learn of the pause when they ask for a slot, and wait it out.
            let others = try await Self.admit(2, to: rig, hosts: [1, 2])
            for host in [1, 2] {
                let client = rig.gateway(host).client
                let status = try await eventually("host \(host) to take on the shared pause", { try await client.status() }) {
                    $0["pausedUntil"]?.string != nil
                }
                let pausedUntil = try #require(status["pausedUntil"]?.string.flatMap(Self.date))
                #expect(pausedUntil.timeIntervalSince(until) > -0.05, "the shared pause ends with host-a's: \(pausedUntil) vs \(until)")
            }
            let records = try await rig.finishedRecords(first.map { ($0.host, $0.id) } + others.map { ($0.host, $0.id) })
            #expect(records.allSatisfy { $0["state"]?.string == "done" }, "\(records)")
            let stats = try await rig.simulator.stats()
            #expect(stats.answered(429) == 1, "only the injected 429: \(stats)")
            // Arrivals in order: the 429, then the three sent after the pause ended.
            let times = (stats.arrivalTimesNs ?? []).sorted().dropFirst()
            #expect(times.count == 3, "\(stats)")
            for time in times {
                let arrived = Date(timeIntervalSince1970: Double(time) / 1e9)
                #expect(arrived >= until, "an arrival at \(arrived) came before the pause ended at \(until)")
            }
        }
    }

    @Test("PostgreSQL stopped mid-burst: nothing reaches the upstream while it is down, admissions go on, everything is done after")
    func databaseDownMidBurst() async throws {
        try await withSharedRig(simulator: Self.strict) { rig in
            var admitted = try await Self.admit(24, to: rig, hosts: [0, 1, 2])
            let simulator = rig.simulator
            _ = try await eventually("a few attempts to arrive", { try await simulator.stats() }) { $0.arrivals >= 6 }
            try await rig.postgres.stopServer()
            for host in 0..<3 {
                let gateway = rig.gateway(host)
                _ = try await eventually("host \(host) to see the database gone", { try await Self.sharedQuota(gateway) }) {
                    $0["reachable"]?.bool == false
                }
            }
            // Every host knows: from here until the server is back, nothing may arrive upstream.
            let downSince = Date()
            let rendered = try await rig.gateway(0).cli(["status"])
            #expect(rendered.stdout.contains("DATABASE UNAVAILABLE"), "\(rendered.stdout)")
            let shared = try await Self.sharedQuota(rig.gateway(0))
            #expect(shared["lastError"]?.string?.isEmpty == false, "status says why: \(shared)")
            #expect(try await Self.sharedQuotaUp(rig.gateway(0)) == 0, "the metric says so too")
            // Admissions go on and are kept.
            admitted += try await Self.admit(3, to: rig, hosts: [0, 1, 2])
            let upAgain = Date()
            try await rig.postgres.startServer()

            let records = try await rig.finishedRecords(admitted.map { ($0.host, $0.id) })
            #expect(records.allSatisfy { $0["state"]?.string == "done" }, "\(records.map { $0["state"] ?? .null })")
            let stats = try await rig.simulator.stats()
            Self.expectWithinLimits(stats)
            #expect(stats.arrivals == 27, "\(stats)")
            let during = (stats.arrivalTimesNs ?? []).map { Date(timeIntervalSince1970: Double($0) / 1e9) }
                .filter { $0 > downSince && $0 < upAgain }
            #expect(during.isEmpty, "arrivals while the database was down: \(during)")
            for host in 0..<3 {
                #expect(try await Self.sharedQuota(rig.gateway(host))["reachable"]?.bool == true)
                #expect(try await Self.sharedQuotaUp(rig.gateway(host)) == 1)
            }
        }
    }

    /// `mdegate_shared_quota_up` from the gateway's `/metrics`.
    static func sharedQuotaUp(_ gateway: GatewayProcess) async throws -> Double? {
        try await gateway.client.metrics().value("mdegate_shared_quota_up")
    }

    @Test("kill -9 of one gateway mid-burst: the others go on, and the killed one recovers its queue after a restart")
    func hostCrashMidBurst() async throws {
        try await withSharedRig(simulator: Self.strict) { rig in
            let admitted = try await Self.admit(30, to: rig, hosts: [0, 1, 2])
            let simulator = rig.simulator
            _ = try await eventually("a few attempts to arrive", { try await simulator.stats() }) { $0.arrivals >= 6 }
            try await rig.gateway(2).crash()
            let survivors = admitted.filter { $0.host != 2 }
            let finished = try await rig.finishedRecords(survivors.map { ($0.host, $0.id) })
            #expect(finished.allSatisfy { $0["state"]?.string == "done" })
            try await rig.restart(2)
            let recovered = try await rig.finishedRecords(admitted.filter { $0.host == 2 }.map { ($0.host, $0.id) })
            #expect(recovered.allSatisfy { $0["state"]?.string == "done" }, "\(recovered)")
            let stats = try await rig.simulator.stats()
            Self.expectWithinLimits(stats)
            for request in admitted {
                #expect(stats.arrivals(for: request.target) >= 1, "\(request.target) was never sent")
            }
        }
    }

    /// Every attempt in the shared ledger: host and instant (ns since the epoch), oldest first.
    static func ledger(_ postgres: TestPostgres) async throws -> [(host: String, at: Int64)] {
        let client = postgres.client(logger: Logger(label: "test"))
        return try await withThrowingTaskGroup(of: [(host: String, at: Int64)].self) { group in
            group.addTask {
                await client.run()
                return []
            }
            var rows: [(host: String, at: Int64)] = []
            let query = "SELECT host, (extract(epoch FROM at) * 1000000)::bigint FROM mdegate_attempts ORDER BY at"
            for try await (host, micros) in try await client.query(PostgresQuery(unsafeSQL: query)).decode((String, Int64).self) {
                rows.append((host, micros * 1000))
            }
            group.cancelAll()
            return rows
        }
    }

    static func date(_ text: String) -> Date? {
        try? Date(text, strategy: Date.ISO8601FormatStyle(includingFractionalSeconds: true))
    }
}

/// What an operator sees when the shared quota is configured wrong: `check-config` and the
/// daemon name the key and the reason, and never print the password.
@Suite("Shared quota: bad configuration", .serialized, .timeLimit(.minutes(HarnessTime.suiteMinutes)))
struct SharedQuotaConfigurationTests {
    static let password = "pw-Zq81-never-shown"

    /// `mdegate check-config` on a gateway configuration with these `shared_quota` keys.
    static func checkConfig(_ shared: [String: String], in directory: TemporaryDirectory) async throws -> CommandResult {
        var options = GatewayOptions()
        options.sharedQuota = shared
        try directory.write("token", to: "token")
        try directory.write(options.yaml(directory: directory, upstream: "http://127.0.0.1:9"), to: "config.yaml")
        return try await CommandResult.run(["check-config", "--config", directory.file("config.yaml")])
    }

    @Test("unreachable server, missing or wrong password, wrong CA: clear errors naming the key, never the password")
    func badSettings() async throws {
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        // Making keys is heavy: it takes its share of the machine, as the server's start does.
        try await sharingTheMachine {
            let pki = try await TestPKI(directory: directory.path)
            let server = try await TestPostgres.start(password: Self.password, tls: (pki.server.certificatePath, pki.server.keyPath))
            do {
                try directory.write(Self.password + "\n", to: "right-password")
                try directory.write("not-the-password\n", to: "wrong-password")
                let otherCA = try TemporaryDirectory()
                defer { otherCA.remove() }
                let other = try await TestPKI(directory: otherCA.path)

                let right = try await Self.checkConfig(
                    ["url": server.tlsURL, "password_file": directory.file("right-password"), "ca_file": pki.caFile], in: directory)
                #expect(right.exitCode == 0, "\(right)")
                #expect(right.stdout.contains("is reachable"), "\(right)")
                #expect(right.stdout.contains("TLS verified"), "\(right)")

                let unreachable = try await Self.checkConfig(["url": "postgresql://mdegate@127.0.0.1:9/mdegate"], in: directory)
                #expect(unreachable.exitCode == 1, "\(unreachable)")
                #expect(unreachable.stderr.contains("shared_quota.url"), "\(unreachable)")
                #expect(unreachable.stderr.contains("cannot connect"), "\(unreachable)")

                let missing = try await Self.checkConfig(
                    ["url": server.socketURLWithPort, "password_file": directory.file("no-such-file")], in: directory)
                #expect(missing.exitCode == 1, "\(missing)")
                #expect(missing.stderr.contains("shared_quota.password_file"), "\(missing)")

                let wrong = try await Self.checkConfig(
                    ["url": server.socketURLWithPort, "password_file": directory.file("wrong-password")], in: directory)
                #expect(wrong.exitCode == 1, "\(wrong)")
                #expect(wrong.stderr.contains("password authentication failed"), "\(wrong)")

                let wrongCA = try await Self.checkConfig(
                    ["url": server.tlsURL, "password_file": directory.file("right-password"), "ca_file": other.caFile], in: directory)
                #expect(wrongCA.exitCode == 1, "\(wrongCA)")
                #expect(wrongCA.stderr.contains("TLS"), "\(wrongCA)")

                let inURL = try await Self.checkConfig(
                    ["url": "postgresql://mdegate:\(Self.password)@127.0.0.1:\(server.port)/postgres"], in: directory)
                #expect(inURL.exitCode == 1, "\(inURL)")
                #expect(inURL.stderr.contains("shared_quota.url"), "\(inURL)")

                for result in [right, unreachable, missing, wrong, wrongCA, inURL] {
                    #expect(!result.stdout.contains(Self.password) && !result.stderr.contains(Self.password), "\(result)")
                    #expect(!result.stderr.contains("not-the-password"), "\(result)")
                }
                await server.stop()
            } catch {
                await server.stop()
                throw error
            }
        }
    }

    @Test("a gateway whose database cannot be reached admits and keeps requests, sends nothing, and says why")
    func unreachableDatabaseFailsClosed() async throws {
        var options = GatewayOptions()
        options.sharedQuota = ["url": "postgresql://mdegate@127.0.0.1:9/mdegate", "host_name": "lonely"]
        try await withRig(gateway: options) { rig in
            let answer = try await rig.client.cancel(machineActionID(), prefer: "respond-async")
            #expect(answer.status == 202, "\(answer.summary)")
            let client = rig.client
            // First the pool's timeout is reported ("no answer … within 2.0 seconds"); the probe
            // that follows names the cause.
            let status = try await eventually("the gateway to report why the database is unreachable", { try await client.status() }) {
                $0["sharedQuota"]?["reachable"]?.bool == false
                    && $0["sharedQuota"]?["lastError"]?.string?.contains("cannot connect") == true
            }
            let shared = try #require(status["sharedQuota"])
            #expect(shared["host"]?.string == "lonely")
            #expect(status["queue"]?["depth"]?.int == 1, "the request is kept: \(status)")
            #expect(try await rig.simulator.stats().arrivals == 0, "nothing is sent without a slot from the database")
        }
    }
}
