import Foundation
import HTTPTypes
import MDEGateCore

/// `latency`: synchronous cancels one after another on three paths, interleaved call by call,
/// with limits that never bind:
///
/// - direct: the simulator over loopback TCP, the baseline;
/// - nginx: a Unix socket → nginx `proxy_pass` → the simulator (kept-alive upstream connections),
///   the anchor: what a minimal proxy on a Unix socket adds;
/// - mdegate: a Unix socket → mdegate → libcurl → the simulator.
///
/// What nginx and mdegate add over direct is compared side by side. Without nginx the anchor is
/// skipped (and said so), and direct and mdegate are still measured.
struct LatencyScenario: Sendable {
    var requests: Int
    var warmup: Int
    /// The nginx executable (`--nginx`); nil looks for one (`RunningNginx.find`).
    var nginx: String?

    enum Path: Int, CaseIterable, Sendable {
        case direct, nginx, gateway

        /// The first group of the machine action ids this path cancels.
        var tag: String {
            switch self {
            case .direct: "d1d1d1d1"
            case .nginx: "e9e9e9e9"
            case .gateway: "9a9a9a9a"
            }
        }

        var name: String {
            switch self {
            case .direct: "direct"
            case .nginx: "nginx"
            case .gateway: "mdegate"
            }
        }
    }

    private struct Timings: Sendable {
        /// Measured durations in milliseconds, in call order, indexed by `Path.rawValue`.
        var elapsed: [[Double]] = Path.allCases.map { _ in [] }
        /// Every call in order, warm-up included: (path, measured, sent, answered), wall clock.
        var calls: [(path: Path, measured: Bool, sentWall: Int64, answeredWall: Int64)] = []
        var failures: [String: Int] = [:]
        var firstError: String?
    }

    func run(in lab: Lab) async throws -> Report {
        let limits = [Limit(calls: 100_000, window: .seconds(1))]
        let simulator = try await lab.startSimulator(limits: [])
        let daemon = try await lab.startDaemon(.init(limits: limits, guardBand: .milliseconds(1)), simulator: simulator)
        var endpoints: [Path: Endpoint] = [.direct: simulator.endpoint, .gateway: daemon.endpoint]
        var skipped: String?
        switch RunningNginx.find(nginx) {
        case .success(let executable):
            do {
                endpoints[.nginx] = try await lab.startNginx(executable: executable, simulator: simulator).endpoint
            } catch {
                FileHandle.standardError.write(Data("mdegate-bench: nginx did not start: \(error)\n".utf8))
                // One line for the note: the reason and the first line of nginx's output.
                let lines = "\(error)".split(separator: "\n").prefix(2).map {
                    $0.trimmingCharacters(in: CharacterSet(charactersIn: " |"))
                }
                var reason = lines.filter { !$0.isEmpty }.joined(separator: " ")
                if reason.hasSuffix(":") { reason.removeLast() }
                skipped = "nginx (\(executable)) did not start: \(reason)"
            }
        case .failure(let reason):
            skipped = reason.description
        }
        let paths = Path.allCases.filter { endpoints[$0] != nil }

        var report = Report(
            scenario: "latency",
            title: "latency: \(requests) synchronous cancels one at a time on each path, "
                + paths.map(\.name).joined(separator: " / ")
                + " (interleaved call by call, \(warmup) warm-up rounds not counted), \(buildConfiguration) build")
        report.set("requests", .int(requests))
        report.set("nginx_anchor", .string(skipped.map { "skipped: \($0)" } ?? "measured"))

        let count = requests
        let warmup = warmup
        let timeout = lab.environment.secondsLeft
        let softDeadline = lab.environment.softDeadlineMonotonic
        let orders = permutations(paths)
        let connectTo = endpoints
        let timings = Shared(Timings())
        await onThreads(1) { _ in
            var local = Timings()
            do {
                var connections: [Path: HTTPConnection] = [:]
                for path in paths { connections[path] = try HTTPConnection(connectTo[path]!, timeoutSeconds: timeout) }
                // nginx and mdegate add the bearer token themselves: they get the same request.
                let proxiedHeaders: HTTPFields = [.contentType: "application/json"]
                let directHeaders: HTTPFields = [.contentType: "application/json", .authorization: "Bearer \(RunningSimulator.token)"]
                for index in 0..<(warmup + count) where Now.monotonic() < softDeadline {
                    // Every order of the paths in turn: each path goes first, last, and after each other as often.
                    for path in orders[index % orders.count] {
                        let connection = connections[path]!
                        let id = machineActionID(index, tag: path.tag)
                        let sentWall = Now.wall()
                        let began = Now.monotonic()
                        let reply = try connection.send(
                            "POST", "/api/machineactions/\(id)/cancel",
                            headers: path == .direct ? directHeaders : proxiedHeaders, body: cancelBody)
                        let elapsed = Double(Now.monotonic() - began) / 1e6
                        local.calls.append((path, index >= warmup, sentWall, Now.wall()))
                        if reply.status != 200 { local.failures["\(path.name) \(reply.status)", default: 0] += 1 }
                        if index >= warmup { local.elapsed[path.rawValue].append(elapsed) }
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
        let samples = Path.allCases.map { Sample(result.elapsed[$0.rawValue]) }
        let direct = samples[Path.direct.rawValue]
        let nginx = samples[Path.nginx.rawValue]
        let gateway = samples[Path.gateway.rawValue]
        let measured = paths.map { samples[$0.rawValue].count }.min() ?? 0
        report.info("measured calls per path", "\(measured)", key: "pairs", .int(measured))
        report.info("direct to simulator: p50 / p99", "\(ms(direct.p50)) / \(ms(direct.p99))",
                    key: "direct_p50_ms", round4(direct.p50))
        report.info("through nginx: p50 / p99", skipped == nil ? "\(ms(nginx.p50)) / \(ms(nginx.p99))" : "skipped",
                    key: "nginx_p50_ms", round4(nginx.p50))
        report.info("through mdegate: p50 / p99", "\(ms(gateway.p50)) / \(ms(gateway.p99))",
                    key: "gateway_p50_ms", round4(gateway.p50))

        // Side by side: what the anchor adds, what mdegate adds.
        let addedP50 = gateway.p50 - direct.p50
        let addedP99 = gateway.p99 - direct.p99
        let nginxAddedP50 = nginx.p50 - direct.p50
        let nginxAddedP99 = nginx.p99 - direct.p99
        func sideBySide(_ anchor: Double, _ ours: Double) -> String {
            "\(skipped == nil ? ms(anchor) : "skipped") / \(ms(ours))"
        }
        report.target("added latency p50: nginx / mdegate", sideBySide(nginxAddedP50, addedP50),
                      target: "mdegate ≤ 0.5 ms (one fsync on the path)",
                      met: addedP50.isFinite ? addedP50 <= 0.5 : nil, key: "added_p50_ms", round4(addedP50))
        report.target("added latency p99: nginx / mdegate", sideBySide(nginxAddedP99, addedP99),
                      target: "mdegate ≤ 1.5 ms",
                      met: addedP99.isFinite ? addedP99 <= 1.5 : nil, key: "added_p99_ms", round4(addedP99))
        report.set("nginx_added_p50_ms", round4(nginxAddedP50))
        report.set("nginx_added_p99_ms", round4(nginxAddedP99))
        if skipped == nil, nginxAddedP50.isFinite, nginxAddedP50 > 0, addedP50.isFinite {
            report.info("mdegate's added p50 / nginx's", String(format: "%.2f×", addedP50 / nginxAddedP50),
                        key: "added_p50_vs_nginx", round4(addedP50 / nginxAddedP50))
        }

        let gatewayCalls = result.elapsed[Path.gateway.rawValue]
        let directCalls = result.elapsed[Path.direct.rawValue]
        let tenth = min(gatewayCalls.count, directCalls.count) / 10
        if tenth >= 10 {
            let early = Sample(Array(gatewayCalls.prefix(tenth))).p50 - Sample(Array(directCalls.prefix(tenth))).p50
            let late = Sample(Array(gatewayCalls.suffix(tenth))).p50 - Sample(Array(directCalls.suffix(tenth))).p50
            report.info("mdegate added p50, first / last 10% of calls", "\(ms(early)) / \(ms(late))",
                        key: "added_p50_last_tenth_ms", round4(late))
        }
        // Where the added time goes: each call has exactly one upstream arrival, in call order.
        if let arrivals = try? simulator.stats(timeoutSeconds: 30).arrivalTimesNs, arrivals.count == result.calls.count {
            func split(_ path: Path) -> (inbound: Sample, outbound: Sample) {
                let measured = zip(result.calls, arrivals).filter { $0.0.measured && $0.0.path == path }
                return (Sample(measured.map { Double($0.1 - $0.0.sentWall) / 1e6 }),
                        Sample(measured.map { Double($0.0.answeredWall - $0.1) / 1e6 }))
            }
            let shown = [Path.gateway, .nginx, .direct].filter { paths.contains($0) }
            let parts = shown.map(split)
            let viaDirect = split(.direct)
            let viaGateway = split(.gateway)
            let names = shown.map(\.name).joined(separator: " / ")
            report.info("send → upstream arrival p50: \(names)", parts.map { ms($0.inbound.p50) }.joined(separator: " / "),
                        key: "inbound_added_p50_ms", round4(viaGateway.inbound.p50 - viaDirect.inbound.p50))
            report.info("upstream arrival → answer p50: \(names)", parts.map { ms($0.outbound.p50) }.joined(separator: " / "),
                        key: "outbound_added_p50_ms", round4(viaGateway.outbound.p50 - viaDirect.outbound.p50))
            let viaNginx = split(.nginx)
            report.set("nginx_inbound_added_p50_ms", round4(viaNginx.inbound.p50 - viaDirect.inbound.p50))
            report.set("nginx_outbound_added_p50_ms", round4(viaNginx.outbound.p50 - viaDirect.outbound.p50))
        } else {
            report.note("no per-call breakdown: the simulator's arrival times do not match the calls one to one")
        }
        report.set("gateway_p99_ms", round4(gateway.p99))
        report.set("nginx_p99_ms", round4(nginx.p99))
        report.set("direct_p99_ms", round4(direct.p99))
        if let skipped { report.note("nginx anchor skipped: \(skipped)") }
        report.note("direct is one loopback TCP hop from this client; nginx is a Unix socket + nginx proxy_pass "
            + "(upstream keepalive) over loopback TCP; mdegate is a Unix socket + mdegate + libcurl over loopback TCP; "
            + "every path keeps its connections alive")
        return report
    }
}

/// Every order of `items` (6 for three paths, 2 for two).
private func permutations<Element>(_ items: [Element]) -> [[Element]] {
    guard items.count > 1 else { return [items] }
    return items.indices.flatMap { index in
        var rest = items
        let first = rest.remove(at: index)
        return permutations(rest).map { [first] + $0 }
    }
}
