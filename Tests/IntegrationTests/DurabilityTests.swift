import Foundation
import MDEGateTransport
import Testing

/// What survives a crash, and what a reload changes.
@Suite("Durability and reload: kill -9, restart, SIGHUP", .timeLimit(.minutes(HarnessTime.suiteMinutes)))
struct DurabilityTests {
    /// Runs `body` with a second daemon started on the rig's directory (same socket, same state),
    /// and stops that daemon afterwards.
    private func withRestartedGateway<T>(
        _ rig: TestRig, _ options: GatewayOptions, _ body: (GatewayProcess) async throws -> T
    ) async throws -> T {
        let restarted = try await GatewayProcess(directory: rig.directory, options: options, upstream: rig.simulator)
        do {
            let value = try await body(restarted)
            if let end = restarted.unexpectedEnd { Issue.record("the restarted daemon ended with \(end)\n\(restarted.process.diagnostics())") }
            await restarted.stop()
            return value
        } catch {
            FileHandle.standardError.write(Data(restarted.process.diagnostics(lastLines: 80).utf8))
            await restarted.stop()
            throw error
        }
    }

    @Test("after kill -9 and a restart, accepted requests are still there and the spent quota stays spent")
    func crashAndRestart() async throws {
        var options = GatewayOptions()
        options.limits = ["1/1m"]
        try await withRig(gateway: options) { rig in
            let sent = try await rig.client.cancel(machineActionID())
            #expect(sent.status == 200, "\(sent.summary)")
            let sentRID = try #require(sent.requestID)
            let queuedID = machineActionID()
            let accepted = try await rig.client.cancel(queuedID, prefer: "respond-async")
            #expect(accepted.status == 202, "\(accepted.summary)")
            let queuedRID = try #require(try accepted.json()["id"]?.string)

            try await rig.gateway.crash()

            try await withRestartedGateway(rig, options) { restarted in
                let queued = try await restarted.client.record(queuedRID)
                #expect(queued["state"]?.string == "queued", "\(queued)")
                let done = try await restarted.client.record(sentRID)
                #expect(done["state"]?.string == "done", "\(done)")
                let status = try await restarted.client.status()
                #expect(status["limits"]?[0]?["used"]?.int == 1, "a restart never hands out a fresh quota: \(status)")
                #expect(status["queue"]?["depth"]?.int == 1, "\(status)")
                let stats = try await rig.simulator.stats()
                #expect(stats.arrivals(for: queuedID) == 0, "\(stats)")
                #expect(stats.arrivals == 1, "\(stats)")
            }
        }
    }

    @Test("SIGKILL three times under a saturating load: every accepted request completes, the strict upstream sees no violation, only sends cut short are seen twice")
    func crashesUnderLoad() async throws {
        var options = GatewayOptions()
        options.limits = ["5/1s", "12/4s"]
        options.guardBand = GatewayOptions.strictUpstreamGuard
        let kills = 3
        try await withRig(
            simulator: ["--limit", "5/1s", "--limit", "12/4s", "--retry-after", "1", "--delay", "100ms"],
            gateway: options, alone: true
        ) { rig in
            var requests: [(machineAction: String, rid: String)] = []
            for _ in 0..<30 {
                let id = machineActionID()
                let accepted = try await rig.client.cancel(id, prefer: "respond-async")
                #expect(accepted.status == 202, "\(accepted.summary)")
                requests.append((id, try #require(try accepted.json()["id"]?.string)))
            }
            let simulator = rig.simulator
            var seen = 0
            var gateway = rig.gateway
            var restarted: [GatewayProcess] = []
            func stopRestarted() async { for process in restarted { await process.stop() } }
            do {
                for _ in 0..<kills {
                    // Kill once the upstream has seen more, i.e. in the middle of sending.
                    let before = seen
                    seen = try await eventually("more attempts to reach the upstream", { try await simulator.stats() }) {
                        $0.arrivals >= before + 3
                    }.arrivals
                    try await gateway.crash()
                    gateway = try await GatewayProcess(directory: rig.directory, options: options, upstream: rig.simulator)
                    restarted.append(gateway)
                }

                for request in requests {
                    let record = try await gateway.client.finishedRecord(request.rid, timeout: .seconds(60))
                    #expect(record["state"]?.string == "done", "\(record)")
                }
                let stats = try await simulator.stats()
                #expect(stats.violations == 0, "\(stats)")
                #expect(stats.answered(429) == 0, "\(stats)")
                // A send cut short by a kill is sent again after the restart (its attempt already
                // counted), and may be cut short again by the next kill: at most once more per kill,
                // and per kill at most the in-flight cap of repeats in all.
                for request in requests {
                    #expect((1...(1 + kills)).contains(stats.arrivals(for: request.machineAction)), "\(request.machineAction): \(stats)")
                }
                let repeats = stats.arrivals - requests.count
                #expect(repeats <= kills * options.maxConcurrency, "\(repeats) repeated sends: \(stats)")
                let used = try await gateway.client.status()
                let hourly = try #require(used["limits"]?[1]?["used"]?.int, "\(used)")
                #expect(hourly <= 12, "\(used)")
            } catch {
                await stopRestarted()
                throw error
            }
            await stopRestarted()
        }
    }

    @Test("a 429 pause survives kill -9 and a restart")
    func pauseSurvivesRestart() async throws {
        try await withRig { rig in
            try await rig.simulator.setFaults(["next429": ["count": 1, "retryAfter": 60]])
            let simulator = rig.simulator
            let accepted = try await rig.client.cancel(machineActionID(), prefer: "respond-async")
            #expect(accepted.status == 202, "\(accepted.summary)")
            _ = try await eventually("the upstream to answer 429", { try await simulator.stats() }) { $0.answered(429) == 1 }
            let paused = try await eventually("the gateway to report the pause", { try await rig.client.status() }) {
                $0["pausedUntil"]?.string != nil
            }

            try await rig.gateway.crash()

            try await withRestartedGateway(rig, GatewayOptions()) { restarted in
                let status = try await restarted.client.status()
                #expect(status["pausedUntil"]?.string != nil, "\(status)")
                #expect(status["pausedUntil"] == paused["pausedUntil"], "\(status)")
                #expect(try await simulator.stats().arrivals == 1, "nothing is sent during the pause")
            }
        }
    }

    @Test("SIGHUP reloads the limits while the daemon keeps serving")
    func reloadLimits() async throws {
        try await withRig { rig in
            var changed = GatewayOptions()
            changed.limits = ["7/1s", "20/4s"]
            try rig.directory.write(changed.yaml(directory: rig.directory, upstream: rig.simulator.baseURL), to: "config.yaml")
            rig.gateway.process.send(SIGHUP)
            let status = try await eventually("the new limits in /v1/status", { try await rig.client.status() }) {
                $0["limits"]?[0]?["spec"]?.string == "7/1s"
            }
            #expect(status["limits"]?[1]?["spec"]?.string == "20/4s")
            let answer = try await rig.client.cancel(machineActionID())
            #expect(answer.status == 200, "\(answer.summary)")
        }
    }

    @Test("SIGHUP changes the log level at once")
    func reloadLogLevel() async throws {
        var options = GatewayOptions()
        options.logLevel = "info"
        try await withRig(gateway: options) { rig in
            let quiet = try await rig.client.cancel(machineActionID())
            #expect(quiet.status == 200, "\(quiet.summary)")
            #expect(!rig.gateway.process.lines(.stderr).contains { $0.contains("request admitted") })

            options.logLevel = "debug"
            try rig.directory.write(options.yaml(directory: rig.directory, upstream: rig.simulator.baseURL), to: "config.yaml")
            rig.gateway.process.send(SIGHUP)
            try await rig.gateway.process.waitForLine(containing: "log.level is now debug", in: [.stderr], timeout: .seconds(30))
            let loud = try await rig.client.cancel(machineActionID())
            #expect(loud.status == 200, "\(loud.summary)")
            let line = try await rig.gateway.process.waitForLine(containing: "request admitted", in: [.stderr], timeout: .seconds(30))
            #expect(line.contains(loud.requestID ?? "?"), "\(line)")
        }
    }

    @Test("SIGHUP with an invalid file names the key, keeps the old configuration and keeps serving")
    func reloadRefused() async throws {
        try await withRig { rig in
            var broken = GatewayOptions()
            broken.limits = ["five per second"]
            try rig.directory.write(broken.yaml(directory: rig.directory, upstream: rig.simulator.baseURL), to: "config.yaml")
            rig.gateway.process.send(SIGHUP)
            try await rig.gateway.process.waitForLine(containing: "quota.limits", in: [.stderr], timeout: .seconds(30))
            let status = try await rig.client.status()
            #expect(status["limits"]?[0]?["spec"]?.string == "5/1s", "\(status)")
            let answer = try await rig.client.cancel(machineActionID())
            #expect(answer.status == 200, "\(answer.summary)")
        }
    }

    @Test("a second daemon on the same state file refuses to start, naming state.path and the holder's pid; after kill -9 the file is free again")
    func oneDaemonPerStateFile() async throws {
        try await withRig { rig in
            // Another socket, the same state: as an operator's manual run beside the service.
            let config = try String(contentsOfFile: rig.gateway.configPath, encoding: .utf8)
                .replacingOccurrences(of: rig.gateway.socketPath, with: rig.directory.file("second.sock"))
            try rig.directory.write(config, to: "second.yaml")
            let second = try await CommandResult.run(["serve", "--config", rig.directory.file("second.yaml")])
            #expect(second.exitCode != 0, "\(second)")
            #expect(second.stderr.contains("state.path"), "\(second)")
            #expect(second.stderr.contains(rig.directory.file("state.sqlite")), "\(second)")
            #expect(second.stderr.contains("process \(rig.gateway.process.pid)"), "\(second)")
            #expect(!FileManager.default.fileExists(atPath: rig.directory.file("second.sock")), "it never served")
            let answer = try await rig.client.cancel(machineActionID())
            #expect(answer.status == 200, "the first daemon serves on: \(answer.summary)")

            // kill -9 leaves no stale lock: the kernel let go of it with the process.
            try await rig.gateway.crash()
            try await withRestartedGateway(rig, GatewayOptions()) { restarted in
                let status = try await restarted.client.status()
                #expect(status["queue"]?["depth"]?.int == 0)
            }
        }
    }
}
