import Dispatch
import Foundation
import HTTPTypes
import MDEGateCore
import MDEGateWire

/// `auth`: OAuth2 client credentials against the simulator's token endpoint (client secret,
/// loopback HTTP). Two questions:
///
/// 1. What does a token refresh cost the call that triggers it? Warm synchronous calls alternate
///    with calls made right after the simulator revoked every token: those get 401, make the
///    gateway fetch a new token, and are sent again.
/// 2. What do waiting clients see while the login host is down for `outage` seconds, and is
///    anything lost? The tokens are revoked and the token endpoint answers 503; a synchronous
///    caller, a caller with `Prefer: wait=5` and async callers submit; the outage ends.
struct AuthScenario: Sendable {
    var rounds: Int
    var outageSeconds: Double
    var asyncRequests: Int

    func run(in lab: Lab) async throws -> Report {
        var report = Report(
            scenario: "auth",
            title: "auth: token refresh cost over \(rounds) rounds, then a \(Int(outageSeconds)) s login outage with "
                + "\(asyncRequests) async + 2 waiting callers, \(buildConfiguration) build")
        let limits = [Limit(calls: 100_000, window: .seconds(60))]
        let simulator = try await lab.startSimulator(limits: [])
        var settings = RunningDaemon.Settings(limits: limits, guardBand: .milliseconds(1))
        settings.clientSecret = true
        let daemon = try await lab.startDaemon(settings, simulator: simulator)
        let timeout = lab.environment.secondsLeft
        let headers: HTTPFields = [.contentType: "application/json"]

        // 1. Refresh cost.
        let rounds = rounds
        let endpoint = daemon.endpoint
        let costs = Shared((warm: [Double](), refreshed: [Double](), failures: [String]()))
        await onThreads(1) { _ in
            var warm: [Double] = []
            var refreshed: [Double] = []
            var failures: [String] = []
            do {
                let connection = try HTTPConnection(endpoint, timeoutSeconds: timeout)
                func call(_ id: String) throws -> Double {
                    let began = Now.monotonic()
                    let reply = try connection.send("POST", "/api/machineactions/\(id)/cancel", headers: headers, body: cancelBody)
                    if reply.status != 200 { failures.append("\(reply.status)") }
                    return Double(Now.monotonic() - began) / 1e6
                }
                _ = try call(machineActionID(0, tag: "a0a0a0a0"))  // the first token, connections warm
                for round in 1...rounds {
                    warm.append(try call(machineActionID(round, tag: "a1a1a1a1")))
                    try simulator.control("/_sim/revoke-tokens", timeoutSeconds: timeout)
                    refreshed.append(try call(machineActionID(round, tag: "a2a2a2a2")))
                }
            } catch {
                failures.append("\(error)")
            }
            let result = (warm, refreshed, failures)
            costs.update { $0 = result }
        }
        let measured = costs.value
        if !measured.failures.isEmpty { report.note("failures: \(measured.failures.prefix(5).joined(separator: ", "))") }
        let warm = Sample(measured.warm)
        let refreshed = Sample(measured.refreshed)
        report.info("warm call: p50 / max", "\(ms(warm.p50)) / \(ms(warm.max))", key: "warm_p50_ms", round4(warm.p50))
        report.info("call that meets a 401 (new token + resend): p50 / max", "\(ms(refreshed.p50)) / \(ms(refreshed.max))",
                    key: "refresh_p50_ms", round4(refreshed.p50))
        report.info("what the refresh costs that call (p50)", ms(refreshed.p50 - warm.p50), key: "refresh_cost_p50_ms",
                    round4(refreshed.p50 - warm.p50))
        report.note("a refresh ahead of expiry costs calls nothing: it runs in the background while the old token is used")

        // 2. Login outage.
        guard outageSeconds > 0 else { return report }
        try simulator.control("/_sim/faults", #"{"tokenOutage":"503"}"#, timeoutSeconds: timeout)
        try simulator.control("/_sim/revoke-tokens", timeoutSeconds: timeout)
        let outageBegan = Now.monotonic()
        let submissions = Shared([(label: String, status: Int, seconds: Double)]())
        let asyncRequests = asyncRequests
        let waiting = Task {
            await onThreads(2) { index in
                let prefer: HTTPFields = index == 0 ? [:] : [.prefer: "wait=5"]
                do {
                    let connection = try HTTPConnection(endpoint, timeoutSeconds: timeout)
                    let reply = try connection.send(
                        "POST", "/api/machineactions/\(machineActionID(index, tag: "b0b0b0b0"))/cancel",
                        headers: headers + prefer, body: cancelBody)
                    let seconds = Double(Now.monotonic() - outageBegan) / 1e9
                    submissions.update { $0.append((index == 0 ? "synchronous caller" : "caller with Prefer: wait=5", reply.status, seconds)) }
                } catch {
                    submissions.update { $0.append(("caller \(index)", -1, 0)) }
                }
            }
        }
        var asyncIDs: [String] = []
        let connection = try HTTPConnection(endpoint, timeoutSeconds: timeout)
        for index in 0..<asyncRequests {
            let reply = try connection.send(
                "POST", "/api/machineactions/\(machineActionID(index, tag: "c0c0c0c0"))/cancel",
                headers: [.contentType: "application/json", .prefer: "respond-async"], body: cancelBody)
            guard reply.status == 202, let body = try? JSONSerialization.jsonObject(with: Data(reply.body)) as? [String: Any],
                let id = body["id"] as? String
            else { throw BenchError("an async submission during the outage answered \(reply.status)") }
            asyncIDs.append(id)
        }
        report.info("async submissions during the outage", "\(asyncIDs.count)×202", key: "outage_async_accepted", .int(asyncIDs.count))
        // Halfway through: what status says.
        while Now.monotonic() - outageBegan < Int64(outageSeconds * 5e8) { usleep(50_000) }
        let middle = try daemon.status(timeoutSeconds: timeout)
        let auth = middle["auth"] as? [String: Any]
        let depth = (middle["queue"] as? [String: Any])?["depth"] as? Int
        report.info("status halfway: auth.lastError", (auth?["lastError"] as? String) ?? "null", key: "outage_last_error",
                    .string((auth?["lastError"] as? String) ?? ""))
        report.info("status halfway: queue depth", depth.map(String.init) ?? "?", key: "outage_depth", depth.map(Report.Scalar.int) ?? .null)
        while Now.monotonic() - outageBegan < Int64(outageSeconds * 1e9) { usleep(50_000) }
        let tokenRequests = try simulator.stats(timeoutSeconds: timeout).tokenRequests ?? 0
        try simulator.control("/_sim/faults", #"{"tokenOutage":"none"}"#, timeoutSeconds: timeout)
        let outageEnded = Now.monotonic()
        report.info("token requests during the outage", "\(tokenRequests - rounds - 1) (backoff 1, 2, 4, 8, then every 10 s)",
                    key: "outage_token_requests", .int(tokenRequests - rounds - 1))

        // Every request ends done; how long after the login host came back.
        var done = 0
        while Now.monotonic() < lab.environment.softDeadlineMonotonic {
            done = 0
            for id in asyncIDs {
                let reply = try connection.send("GET", "/v1/requests/\(id)")
                let record = try? JSONSerialization.jsonObject(with: Data(reply.body)) as? [String: Any]
                if record?["state"] as? String == "done" { done += 1 }
            }
            if done == asyncIDs.count { break }
            usleep(50_000)
        }
        let recovery = Double(Now.monotonic() - outageEnded) / 1e9
        await waiting.value
        report.info("async requests done after the outage", "\(done) of \(asyncIDs.count), \(seconds(recovery)) after the login host came back",
                    key: "outage_recovery_s", round4(recovery))
        for submission in submissions.value.sorted(by: { $0.label < $1.label }) {
            report.info(submission.label, "\(submission.status) after \(seconds(submission.seconds))")
        }
        let stats = try simulator.stats(timeoutSeconds: timeout)
        report.info("upstream 401s / violations", "\(stats.answered["401"] ?? 0) / \(stats.violations)", key: "violations", .int(stats.violations))
        return report
    }
}
