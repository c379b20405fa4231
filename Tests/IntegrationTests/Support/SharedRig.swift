import Foundation
import Synchronization
import Testing

/// Several hosts sharing one quota: a throwaway PostgreSQL server, one strict simulator, and one
/// `mdegate serve` per host, each with its own directory, socket and state, all with the same
/// `shared_quota.url` and a host name of their own (`host-a`, `host-b`, …).
final class SharedRig: Sendable {
    let postgres: TestPostgres
    let simulator: SimulatorProcess
    let options: [GatewayOptions]
    let directories: [TemporaryDirectory]
    private let running: Mutex<[GatewayProcess]>

    static func hostName(_ index: Int) -> String { "host-" + String(UnicodeScalar(UInt8(97 + index))) }

    fileprivate init(postgres: TestPostgres, simulator: SimulatorProcess, options: [GatewayOptions], directories: [TemporaryDirectory], gateways: [GatewayProcess]) {
        self.postgres = postgres
        self.simulator = simulator
        self.options = options
        self.directories = directories
        self.running = Mutex(gateways)
    }

    /// The gateway of host `index` as it runs now.
    func gateway(_ index: Int) -> GatewayProcess { running.withLock { $0[index] } }

    var gateways: [GatewayProcess] { running.withLock { $0 } }

    /// Starts host `index`'s gateway again on its directory (after `crash()`), keeping its state.
    func restart(_ index: Int) async throws {
        let gateway = try await GatewayProcess(directory: directories[index], options: options[index], upstream: simulator)
        running.withLock { $0[index] = gateway }
    }

    /// Every request's record once finished, from the host that admitted it.
    func finishedRecords(_ admitted: [(host: Int, id: String)], timeout: Duration = .seconds(60)) async throws -> [JSON] {
        var records: [JSON] = []
        for request in admitted {
            records.append(try await gateway(request.host).client.finishedRecord(request.id, timeout: timeout))
        }
        return records
    }
}

/// Runs `body` with `hosts` gateways sharing one quota in a fresh PostgreSQL server, in front of
/// one simulator (started with `simulatorArguments`); stops everything and removes every
/// directory afterwards. The test runs alone: the simulator judges timing.
///
/// The gateways' guard band is 100 ms unless `base` sets another: five processes (three
/// gateways, the server, the simulator) and the test's callers share 2 cores, and an arrival the
/// starved simulator reads late by more than the guard band counts as a violation. At 30 ms (the
/// single-host tests' guard) the shared burst saw such violations when the machine was made busy
/// on purpose (two `yes` processes), 1 to 2 runs in 4; the single-host durability test saw them
/// too, 1 run in 4. The default guard band is 250 ms.
func withSharedRig<T>(
    hosts: Int = 3,
    simulator simulatorArguments: [String],
    gateway base: GatewayOptions = GatewayOptions(),
    _ body: (SharedRig) async throws -> T
) async throws -> T {
    await SuiteLoad.shared.enter(alone: true)
    do {
        let value = try await runSharedRig(hosts: hosts, simulator: simulatorArguments, gateway: base, body)
        await SuiteLoad.shared.leave(alone: true)
        return value
    } catch {
        await SuiteLoad.shared.leave(alone: true)
        throw error
    }
}

private func runSharedRig<T>(
    hosts: Int,
    simulator simulatorArguments: [String],
    gateway base: GatewayOptions,
    _ body: (SharedRig) async throws -> T
) async throws -> T {
    let postgres = try await TestPostgres.start()
    var directories: [TemporaryDirectory] = []
    var gateways: [GatewayProcess] = []
    var simulator: SimulatorProcess?
    let rig: SharedRig
    do {
        simulator = try await SimulatorProcess(arguments: simulatorArguments)
        var options: [GatewayOptions] = []
        for index in 0..<hosts {
            var host = base
            if host.guardBand == GatewayOptions().guardBand { host.guardBand = GatewayOptions.strictUpstreamGuard }
            host.sharedQuota["url"] = postgres.socketURL
            host.sharedQuota["host_name"] = SharedRig.hostName(index)
            options.append(host)
            let directory = try TemporaryDirectory()
            directories.append(directory)
            gateways.append(try await GatewayProcess(directory: directory, options: host, upstream: simulator!))
        }
        rig = SharedRig(postgres: postgres, simulator: simulator!, options: options, directories: directories, gateways: gateways)
    } catch {
        for gateway in gateways { await gateway.stop() }
        await simulator?.stop()
        for directory in directories { directory.remove() }
        await postgres.stop()
        throw error
    }
    let outcome: Result<T, any Error>
    do {
        outcome = .success(try await body(rig))
    } catch {
        outcome = .failure(error)
    }
    saveLogs(rig.gateways.enumerated().map { ($1.process, SharedRig.hostName($0)) } + [(rig.simulator.process, "simulator")])
    for gateway in rig.gateways {
        if let ended = gateway.unexpectedEnd {
            Issue.record("mdegate serve ended during the test with \(ended)\n\(gateway.process.diagnostics())")
        }
        if case .failure = outcome { FileHandle.standardError.write(Data((gateway.process.diagnostics(lastLines: 60) + "\n").utf8)) }
        await gateway.stop()
    }
    await rig.simulator.stop()
    for directory in directories { directory.remove() }
    await postgres.stop()
    return try outcome.get()
}
