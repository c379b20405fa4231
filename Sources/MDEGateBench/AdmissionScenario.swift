import Dispatch
import Foundation
import HTTPTypes
import MDEGateCore
import MDEGateWire

/// `admission`: the upstream is blocked by an exhausted quota (1/1h, one call already made), and
/// C connections submit N asynchronous cancels as fast as the daemon admits them. Measures the
/// admission rate, memory per queued request, `GET /v1/status` with that queue, and a restart.
struct AdmissionScenario: Sendable {
    var requests: Int
    var clients: Int
    var restart: Bool

    private struct Tally: Sendable {
        var byStatus: [String: Int] = [:]
        var completions: [Int64] = []
        var firstError: String?
    }

    func run(in lab: Lab) async throws -> Report {
        var report = Report(
            scenario: "admission",
            title: "admission: \(requests) async cancels (Prefer: respond-async) from \(clients) connections, "
                + "upstream blocked (1/1h spent), \(buildConfiguration) build")
        report.set("requests", .int(requests))
        report.set("clients", .int(clients))
        let limits = [Limit(calls: 1, window: .seconds(3600))]
        let simulator = try await lab.startSimulator(limits: limits)
        let daemon = try await lab.startDaemon(
            .init(limits: limits, guardBand: .milliseconds(250), maxPending: requests + 10), simulator: simulator)
        let environment = lab.environment

        // Spend the quota, and wait until that call has come back.
        let blocker = try HTTPConnection(daemon.endpoint, timeoutSeconds: 30).send(
            "POST", "/api/machineactions/\(machineActionID(0, tag: "bbbbbbbb"))/cancel",
            headers: [.contentType: "application/json", .prefer: "respond-async"], body: cancelBody)
        guard blocker.status == 202 else { throw BenchError("the first (quota-spending) request got \(blocker.status), not 202") }
        let settleDeadline = Now.monotonic() + 10_000_000_000
        while Now.monotonic() < settleDeadline {
            let inFlight = (try daemon.status(timeoutSeconds: 5)["inFlight"] as? Int) ?? 1
            if try simulator.stats(timeoutSeconds: 5).arrivals >= 1, inFlight == 0 { break }
            usleep(10_000)
        }

        // Submit.
        let count = requests
        let tally = Shared(Tally())
        let tickets = Ticket(limit: count)
        let connected = DispatchGroup()
        for _ in 0..<clients { connected.enter() }
        let go = DispatchSemaphore(value: 0)
        let endpoint = daemon.endpoint
        let timeout = environment.secondsLeft
        let softDeadline = environment.softDeadlineMonotonic
        let headers: HTTPFields = [.contentType: "application/json", .prefer: "respond-async"]
        let submitters = Task {
            await onThreads(clients) { _ in
                var local = Tally()
                let connection = try? HTTPConnection(endpoint, timeoutSeconds: timeout)
                connected.leave()
                go.wait()
                if let connection {
                    local.completions.reserveCapacity(count / max(1, clients) + 16)
                    while Now.monotonic() < softDeadline, let number = tickets.take() {
                        do {
                            let reply = try connection.send(
                                "POST", "/api/machineactions/\(machineActionID(number + 1, tag: "adadadad"))/cancel",
                                headers: headers, body: cancelBody)
                            local.byStatus[String(reply.status), default: 0] += 1
                            local.completions.append(Now.monotonic())
                        } catch {
                            local.byStatus["error", default: 0] += 1
                            local.firstError = local.firstError ?? "\(error)"
                            break
                        }
                    }
                } else {
                    local.firstError = "cannot connect"
                }
                tally.update { total in
                    total.byStatus.merge(local.byStatus, uniquingKeysWith: +)
                    total.completions += local.completions
                    total.firstError = total.firstError ?? local.firstError
                }
            }
        }
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            connected.notify(queue: .global()) { continuation.resume() }
        }
        // Measured once every connection is open, so only the queued requests make the difference.
        let rssBefore = daemon.process.residentBytes()
        let start = Now.monotonic()
        for _ in 0..<clients { go.signal() }
        await submitters.value
        let result = tally.value
        let completions = result.completions.sorted()
        let rssAfter = daemon.process.residentBytes()

        let accepted = result.byStatus["202"] ?? 0
        let answers = result.byStatus.sorted { $0.key < $1.key }.map { "\($0.value)×\($0.key)" }.joined(separator: ", ")
        report.info("answers", answers, key: "answers", .string(answers))
        if let error = result.firstError { report.note("first client error: \(error)") }
        if completions.count < count { report.note("stopped after \(completions.count) of \(count) requests (time limit)") }
        let elapsed = Double((completions.last ?? start) - start) / 1e9
        let rate = elapsed > 0 ? Double(accepted) / elapsed : .nan
        report.info("time for all admissions", seconds(elapsed), key: "elapsed_s", round4(elapsed))
        report.target(
            "admissions per second", String(format: "%.0f /s", rate), target: "≥ 20000 /s (durable, 2 cores)",
            met: rate.isFinite ? rate >= 20_000 : nil, key: "admissions_per_s", round4(rate))
        let decile = completions.count / 10
        if decile > 1 {
            let firstRate = Double(decile) / (Double(completions[decile - 1] - start) / 1e9)
            let lastRate = Double(decile) / (Double(completions[completions.count - 1] - completions[completions.count - 1 - decile]) / 1e9)
            report.info("rate over first / last 10%", String(format: "%.0f /s / %.0f /s", firstRate, lastRate),
                        key: "rate_last_decile_per_s", round4(lastRate))
        }

        if let before = rssBefore, let after = rssAfter, accepted > 0 {
            let perRequest = Double(after - before) / Double(accepted)
            report.info("daemon RSS before / after", String(format: "%.1f MiB / %.1f MiB", Double(before) / 1_048_576, Double(after) / 1_048_576),
                        key: "rss_after_bytes", .int(after))
            report.target(
                "memory per queued request", String(format: "%.0f B", perRequest), target: "≤ 1024 B (at 100,000 queued)",
                met: perRequest <= 1024, key: "bytes_per_queued", round4(perRequest))
        } else {
            report.target("memory per queued request", "n/a", target: "≤ 1024 B", met: nil, key: "bytes_per_queued", .null)
        }

        // The status document with that queue.
        var statusTimes: [Double] = []
        var depth: Int?
        for attempt in 0..<5 where attempt == 0 || Now.monotonic() < softDeadline {
            let began = Now.monotonic()
            let status = try daemon.status(timeoutSeconds: environment.secondsLeft)
            statusTimes.append(Double(Now.monotonic() - began) / 1e6)
            depth = (status["queue"] as? [String: Any])?["depth"] as? Int
        }
        let statusSample = Sample(statusTimes)
        report.info("queue depth (GET /v1/status)", depth.map(String.init) ?? "n/a", key: "queue_depth", depth.map(Report.Scalar.int) ?? .null)
        report.info("GET /v1/status time: median / max", "\(ms(statusSample.p50, digits: 2)) / \(ms(statusSample.max, digits: 2))",
                    key: "status_ms", round4(statusSample.p50))

        // The audit listing over that many records: one page of 100 per filter, read from the
        // store beside its writer (GET /v1/requests).
        let middle = machineActionID(max(1, accepted / 2), tag: "adadadad")
        let listings: [(label: String, key: String, path: String)] = [
            ("newest 100", "newest", "/v1/requests?limit=100"),
            ("state=queued, 100", "state", "/v1/requests?state=queued&limit=100"),
            ("one machine action id", "target", "/v1/requests?machineActionId=\(middle)"),
            ("a client with none", "client", "/v1/requests?client=nobody&limit=100"),
            ("since 1h and uid, 100", "since_uid", "/v1/requests?since=1h&uid=\(getuid())&limit=100"),
        ]
        if let connection = try? HTTPConnection(daemon.endpoint, timeoutSeconds: 30) {
            for listing in listings where Now.monotonic() < softDeadline {
                var times: [Double] = []
                var status = 0
                for _ in 0..<7 {
                    let began = Now.monotonic()
                    guard let reply = try? connection.send("GET", listing.path) else { break }
                    times.append(Double(Now.monotonic() - began) / 1e6)
                    status = reply.status
                }
                let sample = Sample(times)
                report.info(
                    "audit listing, \(listing.label): median / max (\(status))",
                    "\(ms(sample.p50, digits: 2)) / \(ms(sample.max, digits: 2))",
                    key: "listing_\(listing.key)_ms", round4(sample.p50))
            }
        }

        // Durability and restart.
        let stateFile = (try? FileManager.default.attributesOfItem(atPath: daemon.statePath)[.size] as? Int) ?? nil
        report.info("state file (state.path)", stateFile.map { "\($0) bytes" } ?? "absent", key: "state_file_bytes",
                    stateFile.map(Report.Scalar.int) ?? .null)
        if stateFile == nil {
            report.note("no state file was written: admissions were held in memory only, so this rate is not the "
                + "durable-admission rate the target is about")
        }
        if restart, environment.secondsLeft > 20 {
            let stopBegan = Now.monotonic()
            let exitStatus = await daemon.process.stop(graceSeconds: 30)
            let stopSeconds = Double(Now.monotonic() - stopBegan) / 1e9
            report.info("SIGTERM to exit", "\(seconds(stopSeconds)) (status \(exitStatus.map(String.init) ?? "killed"))",
                        key: "stop_s", round4(stopSeconds))
            let again = try await lab.startDaemon(
                .init(limits: limits, guardBand: .milliseconds(250), maxPending: requests + 10), simulator: simulator)
            let after = try again.status(timeoutSeconds: 30)
            let depthAfter = (after["queue"] as? [String: Any])?["depth"] as? Int
            report.target(
                "restart: start to serving", seconds(again.startupSeconds) + " (\(depthAfter.map(String.init) ?? "?") queued)",
                target: "≤ 1 s with 100,000 queued", met: depthAfter == accepted ? again.startupSeconds <= 1 : false,
                key: "restart_ready_s", round4(again.startupSeconds))
            report.target(
                "restart: requests kept", "\(depthAfter.map(String.init) ?? "n/a") of \(accepted)", target: "all",
                met: depthAfter == accepted, key: "restart_kept", depthAfter.map(Report.Scalar.int) ?? .null)
            usleep(500_000)
            let stats = try simulator.stats(timeoutSeconds: 10)
            report.target(
                "restart: simulator violations", "\(stats.violations) (upstream arrivals \(stats.arrivals))", target: "0",
                met: stats.violations == 0, key: "restart_violations", .int(stats.violations))
        }
        return report
    }
}
