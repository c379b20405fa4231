import Dispatch
import Foundation
import HTTPTypes
import MDEGateCore
import MDEGateWire

/// `burst` and `sustained`: N distinct synchronous cancels at once from an idle ledger, against a
/// strict simulator with the same limits. Measures how close the gateway comes to the optimal
/// makespan the quota rule allows, and how late each slot-bound attempt left.
struct QuotaScenario: Sendable {
    var name: String
    var requests: Int
    var limits: [Limit]
    var guardBand: Duration
    var clients: Int
    var maxConcurrency: Int
    var utilizationTarget: Double
    /// Where docs/benchmarks.md states the utilization target, e.g. "at 5/1s + 12/4s, 30 ms guard".
    var targetContext: String
    /// How long the simulator holds each answer, standing in for the real upstream's round trip.
    var upstreamDelay: Duration?
    /// Poll `GET /v1/status` during the run to read the gateway's own attempt times (see `LedgerProbe`).
    var probeLedger = false
    /// Where to write each arrival with its ideal instant and lag, for analysis.
    var arrivalsCSV: String?
    /// The upstream APIs to burst on at once, `requests` calls each, all with the same limits.
    /// One API reports as before; several report utilization and lag per API (keys prefixed
    /// with the API's name) and the violations of every API.
    var apis: [BenchAPI] = [.cancel]
    /// Gateways sharing one quota in a throwaway PostgreSQL server (`shared`); the requests are
    /// dealt over their sockets in turn. 1 without `sharedQuota`: the single host of every
    /// other scenario.
    var hosts = 1
    var sharedQuota = false

    /// What one synchronous caller saw.
    private struct Call: Sendable {
        var status: Int?
        var error: String?
        var sentWall: Int64 = 0
        var answeredWall: Int64 = 0
    }

    func run(in lab: Lab) async throws -> Report {
        let limitsText = limits.map(\.spec).joined(separator: " + ")
        var report = Report(
            scenario: name,
            title: "\(name): \(requests) synchronous \(apis == [.cancel] ? "cancels" : "calls on each of \(apis.map(\.rawValue).joined(separator: ", "))") at once, limits \(limitsText), guard \(guardBand.configString), "
                + "\(clients) client name(s), upstream.max_concurrency \(maxConcurrency), "
                + "upstream delay \(upstreamDelay.map(\.configString) ?? "none"), \(buildConfiguration) build")
        report.set("requests", .int(requests))
        report.set("limits", .string(limits.map(\.spec).joined(separator: ",")))
        report.set("guard_ms", .double(Double(guardBand.nanoseconds) / 1e6))
        report.set("upstream_delay_ms", .double(Double(upstreamDelay?.nanoseconds ?? 0) / 1e6))
        report.set("hosts", .int(hosts))

        let simulator = try await lab.startSimulator(limits: limits, delay: upstreamDelay)
        let postgres = sharedQuota ? try await lab.startPostgres() : nil
        var settings = RunningDaemon.Settings(
            limits: limits, guardBand: guardBand, maxConcurrency: maxConcurrency, maxPending: max(100_000, requests * apis.count + 10))
        var daemons: [RunningDaemon] = []
        for index in 0..<hosts {
            let name = "host-\(index + 1)"
            settings.sharedQuota = postgres.map { ($0.url, name) }
            daemons.append(try await lab.startDaemon(settings, simulator: simulator, directory: hosts > 1 ? name : nil))
        }
        let daemon = daemons[0]
        try simulator.reset(timeoutSeconds: 10)

        let probe = probeLedger ? LedgerProbe(daemon: daemon, requests: requests, limits: limits, guardBand: guardBand) : nil
        let probing = probe.map { probe in Task { await onThreads(1) { _ in probe.run(until: lab.environment.softDeadlineMonotonic) } } }
        let calls = try await fire(at: daemons.map(\.endpoint), timeoutSeconds: lab.environment.secondsLeft)
        probe?.stop()
        await probing?.value
        let stats = try simulator.stats(timeoutSeconds: 30)
        for daemon in daemons where !daemon.process.isRunning {
            throw BenchError("a daemon exited during the run:\n\(daemon.process.logTail())")
        }
        analyse(calls: calls, stats: stats, recorded: probe?.recordedTimes ?? [:], into: &report)
        if sharedQuota { try reportSlotRequests(of: daemons, into: &report) }
        if let probe, let arrivals = stats.arrivalTimesNs {
            probe.analyse(arrivals: arrivals, into: &report)
        }
        return report
    }

    /// What each host's slot requests to PostgreSQL took (its status keeps the last 1,000): the
    /// time an attempt spends on the shared ledger before it can be stored and sent.
    private func reportSlotRequests(of daemons: [RunningDaemon], into report: inout Report) throws {
        var p50s: [Double] = []
        var p99s: [Double] = []
        var samples = 0
        for daemon in daemons {
            let status = try daemon.status(timeoutSeconds: 10)
            guard let shared = status["sharedQuota"] as? [String: Any],
                let trips = shared["slotRequests"] as? [String: Any],
                let p50 = trips["p50Ms"] as? Double, let p99 = trips["p99Ms"] as? Double, let count = trips["samples"] as? Int
            else {
                report.note("a host reported no slot requests in its status")
                continue
            }
            p50s.append(p50)
            p99s.append(p99)
            samples += count
        }
        guard !p50s.isEmpty else { return }
        let perHost = zip(p50s, p99s).map { String(format: "%.2f/%.2f", $0, $1) }.joined(separator: ", ")
        report.info(
            "slot request to PostgreSQL, p50/p99 per host (ms)", perHost, key: "slot_request_p99_max_ms",
            round4(p99s.max() ?? .nan))
        report.set("slot_request_p50_median_ms", round4(p50s.sorted()[p50s.count / 2]))
        report.info("slot requests answered (every host)", "\(samples)", key: "slot_requests", .int(samples))
        report.note(
            "a slot request is one round trip to mdegate_take_slot (advisory lock, count, insert, commit) on a local "
                + "server with fsync on; an attempt waits for it before it is stored and sent. More requests than arrivals: "
                + "refusals (wait answers) and grants that went stale unspent.")
    }

    /// Connects every caller first, then releases them together; caller `i` uses endpoint `i % count`.
    private func fire(at endpoints: [Endpoint], timeoutSeconds: Double) async throws -> [Call] {
        let count = requests * apis.count
        let apis = apis
        let clients = clients
        let results = Shared<[Call]>(Array(repeating: Call(), count: count))
        let connected = DispatchGroup()
        for _ in 0..<count { connected.enter() }
        let go = DispatchSemaphore(value: 0)
        let tag = String(format: "%08x", UInt32.random(in: 0x1000_0000...0xFFFF_FFFF))

        let callers = Task {
            await onThreads(count) { index in
                var call = Call()
                let connection: HTTPConnection?
                do {
                    connection = try HTTPConnection(endpoints[index % endpoints.count], timeoutSeconds: timeoutSeconds)
                } catch {
                    connection = nil
                    call.error = "\(error)"
                }
                connected.leave()
                go.wait()
                if let connection {
                    var headers: HTTPFields = [.contentType: "application/json"]
                    if clients > 1 { headers[.mdegateClient] = "bench-\(index % clients)" }
                    let request = apis[index % apis.count].request(index, tag: tag)
                    call.sentWall = Now.wall()
                    do {
                        call.status = try connection.send(request.method, request.path, headers: headers, body: request.body).status
                    } catch {
                        call.error = "\(error)"
                    }
                    call.answeredWall = Now.wall()
                }
                results.update { $0[index] = call }
            }
        }
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            connected.notify(queue: .global()) { continuation.resume() }
        }
        for _ in 0..<count { go.signal() }
        await callers.value
        return results.value
    }

    private func analyse(calls: [Call], stats: SimulatorStats, recorded: [Int: Int64], into report: inout Report) {
        // Upstream strictness.
        let throttled = stats.answered["429"] ?? 0
        report.target("simulator limit violations", "\(stats.violations)", target: "0", met: stats.violations == 0,
                      key: "violations", .int(stats.violations))
        report.target("upstream 429 answers", "\(throttled)", target: "0", met: throttled == 0, key: "upstream_429", .int(throttled))

        // What the callers saw.
        var byStatus: [String: Int] = [:]
        for call in calls { byStatus[call.status.map(String.init) ?? "error", default: 0] += 1 }
        let answers = byStatus.sorted { $0.key < $1.key }.map { "\($0.value)×\($0.key)" }.joined(separator: ", ")
        report.info("answers to the callers", answers, key: "answers", .string(answers))
        if let firstError = calls.compactMap(\.error).first { report.note("first caller error: \(firstError)") }
        let sent = calls.map(\.sentWall).filter { $0 > 0 }
        let answered = calls.map(\.answeredWall).filter { $0 > 0 }
        let total = (sent.min().flatMap { first in answered.max().map { Double($0 - first) / 1e9 } }) ?? .nan
        report.info("first send to last answer", seconds(total), key: "total_s", round4(total))
        report.info("upstream arrivals", "\(stats.arrivals) (max \(stats.maxInFlight) in flight)", key: "arrivals", .int(stats.arrivals))

        guard apis.count > 1 else {
            analyse(arrivals: stats.arrivalTimesNs, recorded: recorded, label: "", key: "", into: &report)
            if stats.arrivals != requests {
                report.note("\(stats.arrivals) upstream arrivals for \(requests) requests (retries or resends)")
            }
            return
        }
        for api in apis {
            let counters = stats.byApi?[api.rawValue]
            report.target(
                "\(api.rawValue): simulator limit violations", "\(counters?.violations ?? -1)", target: "0",
                met: counters?.violations == 0, key: "\(api.rawValue)_violations", .int(counters?.violations ?? -1))
            analyse(arrivals: counters?.arrivalTimesNs, recorded: [:], label: "\(api.rawValue): ", key: "\(api.rawValue)_", into: &report)
        }
    }

    /// Utilization and dispatch lag of one API's arrivals (`label` and `key` name it when
    /// several APIs ran at once).
    private func analyse(
        arrivals: [Int64]?, recorded: [Int: Int64], label: String, key: String, into report: inout Report
    ) {
        guard let arrivals, let first = arrivals.first, let last = arrivals.last else {
            report.note("the simulator reported no arrival times (an older mde-simulator without arrivalTimesNs?)")
            report.target("\(label)utilization (optimal / actual span)", "n/a", target: "≥ \(utilizationTarget)", met: nil,
                          key: "\(key)utilization", .null)
            return
        }

        // Makespan: the optimal span is the rule's own projection from the first arrival.
        let span = Double(last - first) / 1e9
        let projection = Ledger(limits: limits, guardBand: guardBand)
            .projectedSlots(count: requests, notBefore: Timestamp(nanosecondsSinceEpoch: first))
        let optimal = Double(projection.last!.nanosecondsSinceEpoch - projection.first!.nanosecondsSinceEpoch) / 1e9
        report.info("\(label)upstream arrival span (first→last)", seconds(span), key: "\(key)arrival_span_s", round4(span))
        report.info("\(label)optimal span for \(requests) (ledger)", seconds(optimal), key: "\(key)optimal_span_s", round4(optimal))
        if optimal > 0, span > 0 {
            let utilization = optimal / span
            report.target(
                "\(label)utilization (optimal / actual span)", String(format: "%.4f", utilization),
                target: "≥ \(utilizationTarget) (\(targetContext))", met: utilization >= utilizationTarget,
                key: "\(key)utilization", round4(utilization))
        } else {
            report.info("\(label)utilization (optimal / actual span)", "n/a: all requests fit in the first slot")
        }

        // Dispatch lag: each arrival against the earliest instant the rule allowed given all the
        // arrivals before it: for every limit N/W, the N-th latest of them plus W + guard (and no
        // earlier than the first arrival: all requests were ready then, sent at once). Computed
        // over the whole list rather than with a `Ledger`, which forgets attempts that are out of
        // every window as of its newest one, while an ideal instant may lie before that.
        var slotBound: [Double] = []
        var steady: [Double] = []
        var all: [Double] = []
        var isSlotBound: [Bool] = []
        var csv = "index,arrival_ns,ideal_ns,lag_ms,slot_bound,freed_by,recorded_ms_precision_ns\n"
        var initialBatchEnd = first
        for (index, arrival) in arrivals.enumerated() {
            let opening = limits.compactMap { limit -> (index: Int, opens: Int64)? in
                guard index >= limit.calls else { return nil }
                return (index - limit.calls, arrivals[index - limit.calls] + (limit.window + guardBand).nanoseconds)
            }.max { $0.opens < $1.opens }
            let slot = opening?.opens ?? first
            // The earlier arrival whose leaving the window opened this slot.
            let freedBy = opening?.index
            let ideal = max(first, slot)
            let lag = Double(arrival - ideal) / 1e6
            all.append(lag)
            if slot > first {
                slotBound.append(lag)
                if let freedBy, isSlotBound[freedBy] { steady.append(lag) }
            } else {
                initialBatchEnd = max(initialBatchEnd, arrival)
            }
            isSlotBound.append(slot > first)
            csv += "\(index),\(arrival),\(ideal),\(lag),\(slot > first),\(freedBy.map(String.init) ?? ""),\(recorded[index].map(String.init) ?? "")\n"
        }
        if let arrivalsCSV, key.isEmpty {
            do {
                try csv.write(toFile: arrivalsCSV, atomically: true, encoding: .utf8)
            } catch {
                report.note("could not write \(arrivalsCSV): \(error)")
            }
        }
        let bound = Sample(slotBound)
        let every = Sample(all)
        let steadySample = Sample(steady)
        report.info("\(label)initial batch spread (no slot wait)", ms(Double(initialBatchEnd - first) / 1e6),
                    key: "\(key)initial_batch_spread_ms", round4(Double(initialBatchEnd - first) / 1e6))
        if bound.isEmpty {
            report.info("\(label)dispatch lag (slot-bound arrivals)", "n/a: no arrival waited for a slot")
        } else {
            report.info("\(label)dispatch lag, slot-bound: count", "\(bound.count)", key: "\(key)lag_count", .int(bound.count))
            report.info("\(label)dispatch lag, slot-bound: p50", ms(bound.p50), key: "\(key)lag_p50_ms", round4(bound.p50))
            report.target("\(label)dispatch lag, slot-bound: p99", ms(bound.p99), target: "≤ 2 ms", met: bound.p99 <= 2,
                          key: "\(key)lag_p99_ms", round4(bound.p99))
            report.info("\(label)dispatch lag, slot-bound: min / max", "\(ms(bound.min)) / \(ms(bound.max))",
                        key: "\(key)lag_max_ms", round4(bound.max))
        }
        if !steadySample.isEmpty {
            report.info(
                "  of which freed by a slot-bound arrival (\(steadySample.count)): p50 / p99 / max",
                "\(ms(steadySample.p50)) / \(ms(steadySample.p99)) / \(ms(steadySample.max))",
                key: "\(key)lag_steady_p99_ms", round4(steadySample.p99))
        }
        report.info("\(label)lag over all arrivals: p50 / p99 / max", "\(ms(every.p50)) / \(ms(every.p99)) / \(ms(every.max))",
                    key: "\(key)lag_all_p99_ms", round4(every.p99))
        guard key.isEmpty else { return }
        report.note(
            "lag is measured where requests arrive (the simulator, CLOCK_REALTIME), against the rule applied to the "
                + "actual earlier arrivals; it includes this request's loopback TCP + libcurl + NIO time minus that "
                + "of the arrival whose slot it took, so it can be slightly negative.")
    }
}
