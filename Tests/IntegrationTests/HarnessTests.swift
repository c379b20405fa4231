import Foundation
import MDEGateTransport
import ProcessHarness
import Testing

/// The harness itself, against the simulator alone: if these fail, every other failure is suspect.
@Suite("Harness: the simulator as the tests drive it", .timeLimit(.minutes(HarnessTime.suiteMinutes)))
struct HarnessTests {
    @Test("the simulator starts on a free port, answers a cancel, counts the arrival, and counts a call over its limit as a violation")
    func simulatorCountsArrivals() async throws {
        try await sharingTheMachine {
            let simulator = try await SimulatorProcess(arguments: ["--limit", "1/1m"])
            do {
                let id = machineActionID()
                let answer = try await simulator.client.post(
                    GatewayClient.cancelPath(id), json: ["Comment": "harness"],
                    headers: [.authorization: "Bearer \(simulator.token)"])
                #expect(answer.status == 200, "\(answer.summary)")
                #expect(try answer.json()["id"]?.string == id)

                let stats = try await simulator.stats()
                #expect(stats.arrivals == 1)
                #expect(stats.arrivals(for: id.uppercased()) == 1)
                #expect(stats.answered(200) == 1)
                #expect(stats.violations == 0)

                // A second call within the minute is over the limit: answered 429, counted.
                let over = try await simulator.client.post(
                    GatewayClient.cancelPath(machineActionID()), json: ["Comment": "over"],
                    headers: [.authorization: "Bearer \(simulator.token)"])
                #expect(over.status == 429, "\(over.summary)")
                let after = try await simulator.stats()
                #expect(after.violations == 1, "\(after)")
                #expect(after.answered(429) == 1, "\(after)")
            } catch {
                await simulator.stop()
                throw error
            }
            await simulator.stop()
        }
    }

    @Test("injected faults reach the next cancel, and a wrong token is refused")
    func simulatorFaults() async throws {
        try await sharingTheMachine {
            let simulator = try await SimulatorProcess()
            do {
                try await simulator.setFaults(["next429": ["count": 1, "retryAfter": 2]])
                let throttled = try await simulator.client.post(
                    GatewayClient.cancelPath(machineActionID()), json: ["Comment": "harness"],
                    headers: [.authorization: "Bearer \(simulator.token)"])
                #expect(throttled.status == 429)
                #expect(throttled.header("Retry-After") == "2")

                let refused = try await simulator.client.post(
                    GatewayClient.cancelPath(machineActionID()), json: ["Comment": "harness"],
                    headers: [.authorization: "Bearer wrong"])
                #expect(refused.status == 401)
            } catch {
                await simulator.stop()
                throw error
            }
            await simulator.stop()
        }
    }

    @Test("a stopped process reports how it ended, and a missing line fails instead of hanging")
    func processLifetime() async throws {
        try await sharingTheMachine {
            let simulator = try await SimulatorProcess()
            let end = await simulator.stop()
            #expect(end != nil)
            #expect(simulator.process.end == end)
            await #expect(throws: ChildProcessError.self) {
                try await simulator.process.waitForLine(containing: "a line that is never printed", timeout: .seconds(10))
            }
        }
    }
}
