import Foundation
import Testing

/// One test's world: its own temporary directory, simulator and gateway.
struct TestRig: Sendable {
    let directory: TemporaryDirectory
    let simulator: SimulatorProcess
    let gateway: GatewayProcess
    /// The CA, server and app certificates when the rig serves HTTPS (`withRig(tls: true)`).
    let pki: TestPKI?

    var client: GatewayClient { gateway.client }

    /// Runs `body` with a client of its own (its own connections), as a separate tool would,
    /// and shuts that client down afterwards.
    ///
    /// Concurrent calls that must reach the gateway at the same time use separate clients, so
    /// each is its own connection and its own peer, as separate tools would be.
    func withSeparateClient<T: Sendable>(_ body: (GatewayClient) async throws -> T) async throws -> T {
        let client = try GatewayClient(socketPath: gateway.socketPath)
        defer { client.shutdown() }
        return try await body(client)
    }
}

/// Runs `body` against a fresh simulator (started with `simulatorArguments`) and a fresh gateway
/// in front of it, then stops both (SIGTERM, SIGKILL after a grace period) and removes the
/// directory, also when `body` throws. A daemon that ended during the test is a failure.
///
/// `alone`: the test runs while no other test of this suite runs. For tests whose upstream judges
/// timing (a strict `--limit`): a machine busy with twenty other daemons could delay an arrival by
/// more than the guard band, which would be the test's fault, not the gateway's.
func withRig<T>(
    simulator simulatorArguments: [String] = [],
    gateway options: GatewayOptions = GatewayOptions(),
    alone: Bool = false,
    tls: Bool = false,
    adjust: ((SimulatorProcess, TestPKI?, GatewayOptions) async throws -> GatewayOptions)? = nil,
    _ body: (TestRig) async throws -> T
) async throws -> T {
    await SuiteLoad.shared.enter(alone: alone)
    let pki: TestPKI?
    let directory: TemporaryDirectory
    let simulator: SimulatorProcess
    let gateway: GatewayProcess
    do {
        directory = try TemporaryDirectory()
        do {
            pki = tls ? try await TestPKI(directory: directory.path) : nil
            simulator = try await SimulatorProcess(
                arguments: simulatorArguments, tls: pki, clientCertificates: pki.map { [$0.client.certificatePath] } ?? [])
        } catch {
            directory.remove()
            throw error
        }
        do {
            let options = try await adjust?(simulator, pki, options) ?? options
            gateway = try await GatewayProcess(directory: directory, options: options, upstream: simulator)
        } catch {
            await simulator.stop()
            directory.remove()
            throw error
        }
    } catch {
        await SuiteLoad.shared.leave(alone: alone)
        throw error
    }

    let outcome: Result<T, any Error>
    do {
        outcome = .success(try await body(TestRig(directory: directory, simulator: simulator, gateway: gateway, pki: pki)))
    } catch {
        outcome = .failure(error)
    }

    if let endedEarly = gateway.unexpectedEnd {
        Issue.record("mdegate serve ended during the test with \(endedEarly)\n\(gateway.process.diagnostics())")
    }
    if case .failure = outcome {
        printDiagnostics(simulator: simulator, gateway: gateway)
    } else if ProcessInfo.processInfo.environment["MDEGATE_IT_VERBOSE"] != nil {
        printDiagnostics(simulator: simulator, gateway: gateway)
    }
    _ = await gateway.stop()
    await simulator.stop()
    saveLogs(simulator: simulator, gateway: gateway)
    directory.remove()
    await SuiteLoad.shared.leave(alone: alone)
    return try outcome.get()
}

/// Runs `body`, which starts processes of its own without a rig, in its share of the machine.
func sharingTheMachine<T>(_ body: () async throws -> T) async throws -> T {
    await SuiteLoad.shared.enter(alone: false)
    do {
        let value = try await body()
        await SuiteLoad.shared.leave(alone: false)
        return value
    } catch {
        await SuiteLoad.shared.leave(alone: false)
        throw error
    }
}

/// With `MDEGATE_IT_LOG_DIR` set, keeps every rig's complete output there, one pair of files per test.
private func saveLogs(simulator: SimulatorProcess, gateway: GatewayProcess) {
    saveLogs([(gateway.process, "gateway"), (simulator.process, "simulator")])
}

/// With `MDEGATE_IT_LOG_DIR` set, writes each process's complete output there, named after the test.
func saveLogs(_ processes: [(process: TestProcess, suffix: String)]) {
    guard let directory = ProcessInfo.processInfo.environment["MDEGATE_IT_LOG_DIR"], !directory.isEmpty else { return }
    try? FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
    let name = (Test.current?.name ?? "test").filter { $0.isLetter || $0.isNumber || $0 == "_" } + "-" + randomSuffix(length: 4)
    for (process, suffix) in processes {
        let text = (process.lines(.stdout) + process.lines(.stderr)).joined(separator: "\n") + "\n"
        try? text.write(toFile: "\(directory)/\(name).\(suffix).log", atomically: true, encoding: .utf8)
    }
}

private func printDiagnostics(simulator: SimulatorProcess, gateway: GatewayProcess) {
    let text = "\(gateway.process.diagnostics(lastLines: 80))\n\(simulator.process.diagnostics(lastLines: 40))\n"
    FileHandle.standardError.write(Data(text.utf8))
}

/// Lets a test run alone: tests share the suite unless one asks for it to itself. First come,
/// first served, so an `alone` test is not starved by tests that start after it.
actor SuiteLoad {
    static let shared = SuiteLoad()

    private var sharing = 0
    private var aloneRunning = false
    private var waiting: [(alone: Bool, continuation: CheckedContinuation<Void, Never>)] = []

    func enter(alone: Bool) async {
        if waiting.isEmpty, canStart(alone: alone) {
            start(alone: alone)
            return
        }
        await withCheckedContinuation { waiting.append((alone, $0)) }
    }

    func leave(alone: Bool) {
        if alone { aloneRunning = false } else { sharing -= 1 }
        while let next = waiting.first, canStart(alone: next.alone) {
            waiting.removeFirst()
            start(alone: next.alone)
            next.continuation.resume()
        }
    }

    private func canStart(alone: Bool) -> Bool {
        alone ? !aloneRunning && sharing == 0 : !aloneRunning
    }

    private func start(alone: Bool) {
        if alone { aloneRunning = true } else { sharing += 1 }
    }
}
