import Foundation
import MDEGateCore

/// `latency`: synchronous cancels one after another, alternating between the gateway (Unix
/// socket → mdegate → libcurl → simulator) and the simulator directly (loopback TCP), with limits
/// that never bind. The difference is what the gateway adds to a call.
struct LatencyScenario: Sendable {
    var requests: Int
    var warmup: Int

    private struct Timings: Sendable {
        var gateway: [Double] = []
        var direct: [Double] = []
        /// Every call in order, warm-up included: (via gateway, measured, sent, answered), wall clock.
        var calls: [(viaGateway: Bool, measured: Bool, sentWall: Int64, answeredWall: Int64)] = []
        var failures: [String: Int] = [:]
        var firstError: String?
    }

    func run(in lab: Lab) async throws -> Report {
        var report = Report(
            scenario: "latency",
            title: "latency: \(requests) synchronous cancels one at a time, gateway vs. simulator directly "
                + "(alternating, \(warmup) warm-up pairs not counted), \(buildConfiguration) build")
        report.set("requests", .int(requests))
        let limits = [Limit(calls: 100_000, window: .seconds(1))]
        let simulator = try lab.startSimulator(limits: [])
        let daemon = try lab.startDaemon(.init(limits: limits, guardBand: .milliseconds(1)), simulator: simulator)

        let count = requests
        let warmup = warmup
        let timeout = lab.environment.secondsLeft
        let softDeadline = lab.environment.softDeadlineMonotonic
        let gatewayEndpoint = daemon.endpoint
        let directEndpoint = simulator.endpoint
        let timings = Shared(Timings())
        await onThreads(1) { _ in
            var local = Timings()
            do {
                let gateway = try HTTPConnection(gatewayEndpoint, timeoutSeconds: timeout)
                let direct = try HTTPConnection(directEndpoint, timeoutSeconds: timeout)
                let gatewayHeaders: [(name: String, value: String)] = [("Content-Type", "application/json")]
                let directHeaders = gatewayHeaders + [("Authorization", "Bearer \(RunningSimulator.token)")]
                func measure(_ connection: HTTPConnection, _ headers: [(name: String, value: String)], _ id: String) throws -> (Int, Double, Int64, Int64) {
                    let sentWall = Now.wall()
                    let began = Now.monotonic()
                    let reply = try connection.send("POST", "/api/machineactions/\(id)/cancel", headers: headers, body: cancelBody)
                    let elapsed = Double(Now.monotonic() - began) / 1e6
                    return (reply.status, elapsed, sentWall, Now.wall())
                }
                for index in 0..<(warmup + count) where Now.monotonic() < softDeadline {
                    let order = index % 2 == 0 ? [true, false] : [false, true]
                    for viaGateway in order {
                        let id = machineActionID(index, tag: viaGateway ? "9a9a9a9a" : "d1d1d1d1")
                        let (status, elapsed, sentWall, answeredWall) = viaGateway
                            ? try measure(gateway, gatewayHeaders, id) : try measure(direct, directHeaders, id)
                        local.calls.append((viaGateway, index >= warmup, sentWall, answeredWall))
                        if status != 200 { local.failures["\(viaGateway ? "gateway" : "direct") \(status)", default: 0] += 1 }
                        guard index >= warmup else { continue }
                        if viaGateway { local.gateway.append(elapsed) } else { local.direct.append(elapsed) }
                    }
                }
            } catch {
                local.firstError = "\(error)"
            }
            let result = local
            timings.update { $0 = result }
        }
        let result = timings.value
        if let error = result.firstError { report.note("stopped early: \(error)") }
        if !result.failures.isEmpty {
            report.note("non-200 answers: " + result.failures.sorted { $0.key < $1.key }.map { "\($0.value)× \($0.key)" }.joined(separator: ", "))
        }
        let gateway = Sample(result.gateway)
        let direct = Sample(result.direct)
        report.info("measured pairs", "\(min(gateway.count, direct.count))", key: "pairs", .int(min(gateway.count, direct.count)))
        report.info("direct to simulator: p50 / p99", "\(ms(direct.p50)) / \(ms(direct.p99))",
                    key: "direct_p50_ms", round4(direct.p50))
        report.info("through mdegate: p50 / p99", "\(ms(gateway.p50)) / \(ms(gateway.p99))",
                    key: "gateway_p50_ms", round4(gateway.p50))
        let addedP50 = gateway.p50 - direct.p50
        let addedP99 = gateway.p99 - direct.p99
        report.target("added latency p50", ms(addedP50), target: "≤ 0.08 ms (nginx proxy_pass over a Unix socket)",
                      met: addedP50.isFinite ? addedP50 <= 0.08 : nil, key: "added_p50_ms", round4(addedP50))
        report.info("added latency p99", ms(addedP99), key: "added_p99_ms", round4(addedP99))
        let tenth = min(result.gateway.count, result.direct.count) / 10
        if tenth >= 10 {
            let early = Sample(Array(result.gateway.prefix(tenth))).p50 - Sample(Array(result.direct.prefix(tenth))).p50
            let late = Sample(Array(result.gateway.suffix(tenth))).p50 - Sample(Array(result.direct.suffix(tenth))).p50
            report.info("added latency p50, first / last 10% of calls", "\(ms(early)) / \(ms(late))",
                        key: "added_p50_last_tenth_ms", round4(late))
        }
        // Where the added time goes: each call has exactly one upstream arrival, in call order.
        if let arrivals = try? simulator.stats(timeoutSeconds: 30).arrivalTimesNs, arrivals.count == result.calls.count {
            func split(_ viaGateway: Bool) -> (inbound: Sample, outbound: Sample) {
                let measured = zip(result.calls, arrivals).filter { $0.0.measured && $0.0.viaGateway == viaGateway }
                return (Sample(measured.map { Double($0.1 - $0.0.sentWall) / 1e6 }),
                        Sample(measured.map { Double($0.0.answeredWall - $0.1) / 1e6 }))
            }
            let viaGateway = split(true)
            let viaDirect = split(false)
            report.info("send → upstream arrival p50: mdegate / direct", "\(ms(viaGateway.inbound.p50)) / \(ms(viaDirect.inbound.p50))",
                        key: "inbound_added_p50_ms", round4(viaGateway.inbound.p50 - viaDirect.inbound.p50))
            report.info("upstream arrival → answer p50: mdegate / direct", "\(ms(viaGateway.outbound.p50)) / \(ms(viaDirect.outbound.p50))",
                        key: "outbound_added_p50_ms", round4(viaGateway.outbound.p50 - viaDirect.outbound.p50))
        } else {
            report.note("no per-call breakdown: the simulator's arrival times do not match the calls one to one")
        }
        report.set("gateway_p99_ms", round4(gateway.p99))
        report.set("direct_p99_ms", round4(direct.p99))
        report.note("the gateway path is Unix socket + mdegate + libcurl over loopback TCP; the direct path is one "
            + "loopback TCP hop from this client; both keep their connection alive")
        return report
    }
}
