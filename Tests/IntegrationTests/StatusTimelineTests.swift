import Foundation
import Testing

/// `mdegate status`'s last hour, and `--watch`.
@Suite("Status: the last hour and --watch", .timeLimit(.minutes(HarnessTime.suiteMinutes)))
struct StatusTimelineTests {
    @Test("status draws the hour's attempts per minute with the 429 marked; a restart keeps the picture")
    func lastHour() async throws {
        try await withRig { rig in
            try await rig.simulator.setFaults(["next429": ["count": 1, "retryAfter": 1]])
            for _ in 0..<3 {
                #expect(try await rig.client.cancel(machineActionID()).status == 200)
            }
            let shown = try await rig.gateway.cli(["status"])
            #expect(shown.exitCode == 0, "\(shown)")
            let lines = shown.stdout.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
            let title = try #require(lines.firstIndex(of: "LAST 60 MINUTES, attempts per minute (! a minute with a 429)"), "\(shown.stdout)")
            #expect(lines[title + 1].hasPrefix("cancel: 4 in the hour of 10800 allowed; busiest minute "), "a 429 and its retry, two more: \(shown.stdout)")
            #expect(lines[title + 5].hasPrefix("    0 ┼") && lines[title + 5].contains("!"), "\(shown.stdout)")
            #expect(lines.allSatisfy { $0.count <= 80 }, "\(shown.stdout)")

            let status = try await rig.client.status()
            let cancel = try #require(status["apis"]?.array?.first { $0["name"]?.string == "cancel" })
            let attempts = try #require(cancel["lastHour"]?["attempts"]?.array)
            #expect(attempts.count == 60)
            #expect(attempts.compactMap(\.int).reduce(0, +) == 4)
            #expect(cancel["lastHour"]?["throttled"]?.array?.compactMap(\.int).reduce(0, +) == 1)

            // The attempts are in the state file: a restarted daemon draws the same hour (the
            // 429 mark is this process's memory and starts again empty).
            rig.gateway.requestStop()
            _ = try await rig.gateway.process.waitForExit()
            let restarted = try await GatewayProcess(directory: rig.directory, options: GatewayOptions(), upstream: rig.simulator)
            do {
                let again = try await restarted.client.status()
                let restored = again["apis"]?.array?.first { $0["name"]?.string == "cancel" }
                #expect(restored?["lastHour"]?["attempts"]?.array?.compactMap(\.int).reduce(0, +) == 4)
            } catch {
                await restarted.stop()
                throw error
            }
            await restarted.stop()
        }
    }

    @Test("status --watch redraws every second until interrupted; --watch with --json is refused")
    func watch() async throws {
        try await withRig { rig in
            #expect(try await rig.client.cancel(machineActionID()).status == 200)
            let watching = try await TestProcess(
                name: "mdegate status --watch", executable: Binaries.gateway, arguments: ["status", "--watch"],
                environment: TestProcess.environment(adding: ["MDEGATE_SOCKET": rig.gateway.socketPath]))
            _ = try await eventually("two frames drawn") {
                watching.lines(.stdout).filter { $0.contains("every 1 s,") }.count
            } until: { $0 >= 2 }
            let frames = watching.lines(.stdout)
            #expect(frames.contains { $0.contains("QUOTA PER API") })
            #expect(frames.contains { $0.hasPrefix("cancel: 1 in the hour") }, "\(frames)")
            watching.send(SIGINT)
            let end = try await watching.waitForExit(timeout: .seconds(10))
            guard case .signalled(let signal) = end else {
                Issue.record("status --watch ended with \(end), not by the interrupt")
                return
            }
            #expect(signal == SIGINT)
            let refused = try await rig.gateway.cli(["status", "--watch", "--json"])
            #expect(refused.exitCode == 64, "\(refused)")
            #expect(refused.stderr.contains("--watch redraws the table"), "\(refused)")
        }
    }
}
