import Foundation
import MDEGateTransport

/// A running `mde-simulator` on a free loopback port: the strict stand-in for the MDE API.
final class SimulatorProcess: Sendable {
    let process: TestProcess
    let port: Int
    let token: String
    let client: HTTPClient

    var baseURL: String { "http://127.0.0.1:\(port)" }

    /// Starts the simulator with `arguments` added to the fixed ones (loopback, port 0, a token
    /// of this test's own, a fixed seed) and waits until it listens.
    init(arguments: [String] = [], token: String = "sim-token-\(randomSuffix())") async throws {
        let process = try TestProcess(
            name: "mde-simulator",
            executable: Binaries.simulator,
            arguments: ["--host", "127.0.0.1", "--port", "0", "--token", token, "--seed", "7"] + arguments,
            environment: TestProcess.environment()
        )
        do {
            let line = try await process.waitForLine(containing: "mde-simulator listening on", in: [.stdout])
            guard let port = line.split(separator: ":").last.flatMap({ Int($0) }) else {
                throw HarnessError("cannot read the port from '\(line)'")
            }
            self.port = port
            client = try HTTPClient(baseURL: "http://127.0.0.1:\(port)")
        } catch {
            await process.stop()
            throw error
        }
        self.process = process
        self.token = token
    }

    /// The simulator's counters (`GET /_sim/stats`).
    func stats() async throws -> SimulatorStats {
        let response = try await client.get("/_sim/stats")
        guard response.status == 200 else { throw HarnessError("GET /_sim/stats: \(response.summary)") }
        return try JSONDecoder().decode(SimulatorStats.self, from: Data(response.body))
    }

    /// Changes the injected faults (`POST /_sim/faults`), e.g. `["next429": ["count": 1, "retryAfter": 2]]`.
    func setFaults(_ faults: JSON) async throws {
        let response = try await client.post("/_sim/faults", json: faults)
        guard response.status == 200 else { throw HarnessError("POST /_sim/faults \(faults): \(response.summary)") }
    }

    @discardableResult
    func stop() async -> ProcessEnd? {
        client.shutdown()
        return await process.stop()
    }
}

/// What `GET /_sim/stats` reports.
struct SimulatorStats: Decodable, Sendable, CustomStringConvertible {
    /// Answers by status code ("200", "429", ...).
    var answered: [String: Int]
    /// Every cancel request that arrived, whatever its answer: each one spent quota upstream.
    var arrivals: Int
    /// Arrivals per machine action id, lowercased.
    var arrivalsById: [String: Int]
    var dropped: Int
    var inFlight: Int
    var maxInFlight: Int
    var tokenRequests: Int
    /// Arrivals beyond a configured `--limit`.
    var violations: Int

    func arrivals(for id: String) -> Int {
        arrivalsById[id.lowercased()] ?? 0
    }

    func answered(_ status: Int) -> Int {
        answered[String(status)] ?? 0
    }

    var description: String {
        "arrivals \(arrivals), answered \(answered), violations \(violations), dropped \(dropped), inFlight \(inFlight)"
    }
}

/// Eight random lowercase letters and digits, for unique names and short paths.
func randomSuffix(length: Int = 8) -> String {
    let alphabet = Array("abcdefghijklmnopqrstuvwxyz0123456789")
    return String((0..<length).map { _ in alphabet.randomElement()! })
}

/// A fresh random machine action id, in lowercase like the ones MDE hands out.
func machineActionID() -> String {
    UUID().uuidString.lowercased()
}

/// A machine action id the simulator does not know (it answers 404 ResourceNotFound).
func unknownMachineActionID() -> String {
    "00000000" + machineActionID().dropFirst(8)
}
