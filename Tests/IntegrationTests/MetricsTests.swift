import Foundation
import MDEGateTransport
import Testing

/// Prometheus metrics: `GET /metrics` on the socket and on `metrics.address`, the counts a
/// known history gives, the exposition checked by promtool, and a real Prometheus server
/// scraping the daemon.
@Suite("Metrics", .timeLimit(.minutes(HarnessTime.suiteMinutes)))
struct MetricsTests {
    /// A 429 then a 200 for one cancel, a 404 for another, and a refused id: a history whose
    /// every count is known.
    private func knownHistory(_ rig: TestRig) async throws -> (done: String, notFound: String) {
        try await rig.simulator.setFaults(["next429": ["count": 1, "retryAfter": 1]])
        let done = machineActionID()
        let answered = try await rig.client.cancel(done, client: "metrics-test")
        #expect(answered.status == 200, "\(answered.summary)")
        let notFound = "00000000-" + machineActionID().dropFirst(9)
        let missing = try await rig.client.cancel(notFound, client: "metrics-test", prefer: "wait=30")
        #expect(missing.status == 404, "\(missing.summary)")
        let refused = try await rig.client.cancel("not-a-guid")
        #expect(refused.status == 400)
        return (done, notFound)
    }

    @Test("GET /metrics on the socket and on metrics.address: exact counts for a 429, a 200, a 404 and refused input; promtool finds no problem")
    func exactCounts() async throws {
        var options = GatewayOptions()
        let port = try freeLoopbackPort()
        options.metricsAddress = "127.0.0.1:\(port)"
        // An hour's window: every attempt of the test is still counted when it looks.
        options.limits = ["5/1s", "100/1h"]
        try await withRig(gateway: options) { rig in
            _ = try await knownHistory(rig)

            let overSocket = try await rig.client.http.get("/metrics")
            #expect(overSocket.status == 200)
            #expect(overSocket.header("Content-Type")?.hasPrefix("text/plain; version=0.0.4") == true)
            let metrics = try Exposition(String(decoding: overSocket.body, as: UTF8.self))
            let cancel = ["api": "cancel"]
            func attempts(_ result: String) -> Double? {
                metrics.value("mdegate_upstream_attempts_total", ["api": "cancel", "result": result])
            }
            #expect(attempts("429") == 1)
            #expect(attempts("2xx") == 1)
            #expect(attempts("4xx") == 1)
            #expect(attempts("5xx") == 0)
            #expect(attempts("no_answer") == 0)
            #expect(metrics.value("mdegate_upstream_attempts_total", ["api": "isolate", "result": "2xx"]) == 0,
                    "every API's series exists from the start")
            #expect(metrics.value("mdegate_requests_admitted_total", ["api": "cancel", "mode": "sync"]) == 2)
            #expect(metrics.value("mdegate_requests_admitted_total", ["api": "cancel", "mode": "async"]) == 0)
            #expect(metrics.value("mdegate_requests_finished_total", ["api": "cancel", "state": "done"]) == 1)
            #expect(metrics.value("mdegate_requests_finished_total", ["api": "cancel", "state": "failed"]) == 1)
            #expect(metrics.value("mdegate_requests_rejected_total", ["code": "InvalidMachineActionId"]) == 1)
            #expect(metrics.value("mdegate_requests_rejected_total", ["code": "QueueFull"]) == 0, "there from the start")
            #expect(metrics.value("mdegate_quota_limit_calls", ["api": "cancel", "limit": "100/1h"]) == 100)
            #expect(metrics.value("mdegate_quota_limit_calls", ["api": "cancel", "limit": "5/1s"]) == 5)
            #expect(metrics.value("mdegate_quota_used_calls", ["api": "cancel", "limit": "100/1h"]) == 3,
                    "the 429 is in the ledger too")
            #expect(metrics.value("mdegate_queue_wait_seconds_count", cancel) == 2)
            #expect(metrics.value("mdegate_upstream_duration_seconds_count", cancel) == 3)
            #expect(metrics.value("mdegate_dispatch_lag_seconds_count", cancel) == 3)
            #expect(metrics.value("mdegate_queue_wait_seconds_bucket", ["api": "cancel", "le": "7200.0"]) == 2)
            #expect(metrics.value("mdegate_queue_depth") == 0)
            #expect(metrics.value("mdegate_inflight_attempts") == 0)
            #expect(metrics.value("mdegate_paused", cancel) == 0, "the 1 s pause is over")
            #expect((metrics.value("mdegate_store_commit_seconds_count") ?? 0) >= 2)
            #expect(metrics.value("mdegate_store_errors_total") == 0)
            #expect(metrics.value("mdegate_token_expiry_timestamp_seconds") == 0, "a token file does not say")
            #expect(metrics.series("mdegate_shared_quota_up").isEmpty, "no shared quota, no series")

            let lint = try await promtool(["check", "metrics"], input: metrics.text)
            #expect(lint.status == 0, "promtool check metrics: \(lint.output)")

            // The same registry over TCP, read-only: nothing else is served there.
            let network = try HTTPClient(baseURL: "http://127.0.0.1:\(port)")
            defer { network.shutdown() }
            let overTCP = try await network.get("/metrics")
            #expect(overTCP.status == 200)
            let scraped = try Exposition(String(decoding: overTCP.body, as: UTF8.self))
            #expect(scraped.value("mdegate_upstream_attempts_total", ["api": "cancel", "result": "429"]) == 1)
            #expect(try await network.get("/healthz").status == 200)
            #expect(try await network.get("/v1/status").status == 404, "status is for the socket's users")
            let cancelOverTCP = try await network.send(
                "POST", GatewayClient.cancelPath(machineActionID()), headers: [.contentType: "application/json"],
                body: Array(#"{"Comment":"x"}"#.utf8))
            #expect(cancelOverTCP.status == 404, "the quota is never open to the network")
            #expect(try await network.send("POST", "/metrics").status == 405)
            #expect(try await rig.simulator.stats().arrivals == 3, "nothing over TCP reached the upstream")
        }
    }

    @Test("a queue that waits: depth by API and by client, the oldest request's age, and the expected wait")
    func queueGauges() async throws {
        var options = GatewayOptions()
        options.limits = ["1/1h"]
        try await withRig(gateway: options) { rig in
            for index in 0..<3 {
                let accepted = try await rig.client.cancel(machineActionID(), client: "queued-\(index % 2)", prefer: "respond-async")
                #expect(accepted.status == 202)
            }
            let metrics = try await eventually("two requests queued", { try await rig.client.metrics() }) { $0.value("mdegate_queue_depth") == 2 && $0.value("mdegate_inflight_attempts") == 0 }
            #expect(metrics.value("mdegate_queued_calls", ["api": "cancel"]) == 2)
            #expect(metrics.value("mdegate_queued_calls", ["api": "isolate"]) == 0)
            let byClient = metrics.series("mdegate_queue_depth_by_client")
            #expect(byClient.map(\.value).reduce(0, +) == 2, "\(byClient)")
            // The client as status shows it: uid and Mdegate-Client name.
            let names: Set<String> = ["uid \(getuid())/queued-0", "uid \(getuid())/queued-1"]
            #expect(Set(byClient.compactMap { $0.labels["client"] }).isSubset(of: names), "\(byClient)")
            let oldest = try #require(metrics.value("mdegate_queue_oldest_seconds", ["api": "cancel"]))
            #expect(oldest > 0 && oldest < 600, "\(oldest)")
            let expected = try #require(metrics.value("mdegate_queue_expected_wait_seconds", ["api": "cancel"]))
            #expect(expected > 3000, "the hour's one call is spent: the last waits about two hours, \(expected)")
            #expect(metrics.value("mdegate_quota_used_calls", ["api": "cancel", "limit": "1/1h"]) == 1)
            #expect(metrics.value("mdegate_queue_overdue_seconds", ["api": "cancel"]) == 0, "the quota explains the wait")
        }
    }

    @Test("a queue held by something other than the quota (no token) is overdue; the quota's own wait never is")
    func overdueQueue() async throws {
        var options = GatewayOptions()
        // The token file holds nothing usable: the gateway admits, and cannot send.
        options.tokenFileContent = ""
        try await withRig(gateway: options) { rig in
            let accepted = try await rig.client.cancel(machineActionID(), prefer: "respond-async")
            #expect(accepted.status == 202)
            let metrics = try await eventually("the queue overdue", { try await rig.client.metrics() }) { ($0.value("mdegate_queue_overdue_seconds", ["api": "cancel"]) ?? 0) > 0.2 }
            #expect(metrics.value("mdegate_queued_calls", ["api": "cancel"]) == 1)
            #expect(metrics.value("mdegate_queue_overdue_seconds", ["api": "isolate"]) == 0)
            #expect(try await rig.simulator.stats().arrivals == 0)
        }
    }

    @Test("contrib's alert rules pass promtool check rules, and their unit tests pass promtool test rules")
    func alertRules() async throws {
        let contrib = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent("contrib/prometheus").path
        try await sharingTheMachine {
            let checked = try await promtool(["check", "rules", "\(contrib)/mdegate-alerts.yml"])
            #expect(checked.status == 0, "\(checked.output)")
            #expect(checked.output.contains("SUCCESS: 8 rules found"), "\(checked.output)")
            let config = try await promtool(["check", "config", "--syntax-only", "\(contrib)/scrape-config.yml"])
            #expect(config.status == 0, "\(config.output)")
            let tested = try await promtool(["test", "rules", "\(contrib)/mdegate-alerts.test.yml"])
            #expect(tested.status == 0, "\(tested.output)")
            #expect(tested.output.contains("SUCCESS"), "\(tested.output)")
        }
    }

    @Test("Prometheus scrapes metrics.address: the series arrive with the values of a known history")
    func prometheusScrapes() async throws {
        var options = GatewayOptions()
        let port = try freeLoopbackPort()
        options.metricsAddress = "127.0.0.1:\(port)"
        try await withRig(gateway: options) { rig in
            let prometheus = try await TestPrometheus(scraping: ["127.0.0.1:\(port)"])
            do {
                _ = try await knownHistory(rig)
                let attempts = try await eventually("Prometheus to hold the attempts", timeout: .seconds(60), {
                    try await prometheus.query(#"mdegate_upstream_attempts_total{api="cancel"}"#)
                }) { series in
                    series.first { $0.labels["result"] == "4xx" }?.value == 1
                        && series.first { $0.labels["result"] == "429" }?.value == 1
                }
                #expect(attempts.first { $0.labels["result"] == "2xx" }?.value == 1)
                #expect(attempts.allSatisfy { $0.labels["job"] == "mdegate" && $0.labels["instance"] == "127.0.0.1:\(port)" })
                let up = try await prometheus.query(#"up{job="mdegate"}"#)
                #expect(up.first?.value == 1)
                let rejected = try await prometheus.query(#"mdegate_requests_rejected_total{code="InvalidMachineActionId"}"#)
                #expect(rejected.first?.value == 1)
                let finished = try await prometheus.query(#"sum(mdegate_requests_finished_total{api="cancel"})"#)
                #expect(finished.first?.value == 2)
            } catch {
                await prometheus.stop()
                throw error
            }
            await prometheus.stop()
        }
    }
}
