import Foundation
import Logging
import MDEGateCore
import MDEGateTransport
import MDEGateWire
import Synchronization
import Testing

@testable import MDEGate

/// The metric updates, in process: each event counted once, on the right labels.
@Suite("Metrics in process")
struct GatewayMetricsTests {
    /// The value of one series in the gateway's exposition; nil if it is not there.
    private func value(_ gateway: Gateway, _ series: String) async -> Double? {
        let text = String(decoding: await gateway.metricsExposition(), as: UTF8.self)
        for line in text.split(separator: "\n") where line.hasPrefix(series + " ") {
            return Double(line.dropFirst(series.count + 1))
        }
        return nil
    }

    @Test("an attempt's result maps its status: 2xx, 4xx, 429, 5xx, no answer, other")
    func attemptResults() {
        typealias Result = GatewayMetrics.AttemptResult
        #expect(Result(status: 200).label == "2xx")
        #expect(Result(status: 201).label == "2xx")
        #expect(Result(status: 404).label == "4xx")
        #expect(Result(status: 429).label == "429")
        #expect(Result(status: 503).label == "5xx")
        #expect(Result(status: nil).label == "no_answer")
        #expect(Result(status: 302).label == "other")
    }

    @Test("a 5xx retried then a 2xx: two attempts, one request done, one queue wait, two upstream durations")
    func retriedRequest() async throws {
        let upstream = ScriptedUpstream()
        let calls = Mutex(0)
        upstream.answer { _ in
            let first = calls.withLock { count -> Bool in
                count += 1
                return count == 1
            }
            return .success(TransportResponse(status: first ? 503 : 200, headers: [:], body: []))
        }
        let gateway = scriptedGateway(
            .testing([Limit(calls: 10, window: .seconds(60))]), store: ControlledStore(), upstream: upstream)
        try await gateway.start()
        guard case .final(let record) = try await gateway.submitted(actionID(1), waiting: .untilFinal(timeout: nil)) else {
            Issue.record("the request is answered")
            return
        }
        #expect(record.state == .done)
        #expect(record.sentAt != nil && record.sentAt! >= record.createdAt, "the first attempt's departure is kept")
        #expect(await value(gateway, #"mdegate_upstream_attempts_total{api="cancel",result="5xx"}"#) == 1)
        #expect(await value(gateway, #"mdegate_upstream_attempts_total{api="cancel",result="2xx"}"#) == 1)
        #expect(await value(gateway, #"mdegate_requests_finished_total{api="cancel",state="done"}"#) == 1)
        #expect(await value(gateway, #"mdegate_requests_finished_total{api="cancel",state="failed"}"#) == 0)
        #expect(await value(gateway, #"mdegate_requests_admitted_total{api="cancel",mode="sync"}"#) == 1)
        #expect(await value(gateway, #"mdegate_queue_wait_seconds_count{api="cancel"}"#) == 1, "only the first attempt ends the wait")
        #expect(await value(gateway, #"mdegate_upstream_duration_seconds_count{api="cancel"}"#) == 2)
        #expect(await value(gateway, #"mdegate_dispatch_lag_seconds_count{api="cancel"}"#) == 2)
        #expect(await value(gateway, #"mdegate_quota_used_calls{api="cancel",limit="10/1m"}"#) == 2)
    }

    @Test("a request that joins another is admitted and coalesced; a withdrawal is finished as withdrawn; a failed commit is a store error")
    func coalescedWithdrawnAndStoreErrors() async throws {
        let upstream = ScriptedUpstream()
        let store = ControlledStore()
        // The hour's only call is spent: everything waits.
        try await store.apply([.attempt(.cancel, Gateway.wallClock())])
        let gateway = scriptedGateway(.testing([Limit(calls: 1, window: .seconds(3600))]), store: store, upstream: upstream)
        try await gateway.start()
        let first = try #require(try await gateway.submitted(actionID(1)).id)
        _ = try #require(try await gateway.submitted(actionID(1)).id)
        #expect(await value(gateway, #"mdegate_requests_admitted_total{api="cancel",mode="async"}"#) == 2)
        #expect(await value(gateway, #"mdegate_requests_coalesced_total{api="cancel"}"#) == 1)
        #expect(await value(gateway, "mdegate_queue_depth") == 2)
        #expect(await value(gateway, #"mdegate_queued_calls{api="cancel"}"#) == 1, "one call for both")
        _ = try await gateway.withdraw(first).get()
        #expect(await value(gateway, #"mdegate_requests_finished_total{api="cancel",state="withdrawn"}"#) == 1)

        store.setFailing(true)
        guard case .storeUnavailable = try await gateway.submitted(actionID(2)) else {
            Issue.record("an admission that cannot be stored is refused")
            return
        }
        // At least the admission's commit; a lazy batch cut just after the failing began fails too.
        let errors = await value(gateway, "mdegate_store_errors_total") ?? 0
        #expect(errors >= 1, "\(errors)")
        #expect(await value(gateway, #"mdegate_requests_admitted_total{api="cancel",mode="async"}"#) == 2, "a refused admission is not admitted")
        store.setFailing(false)
        try await gateway.drain().get()
        #expect(upstream.arrivals.isEmpty)
    }

    @Test("client series come and go with the queue; a reload's limits replace the old ones")
    func dynamicSeries() async throws {
        let upstream = ScriptedUpstream()
        let store = ControlledStore()
        try await store.apply([.attempt(.cancel, Gateway.wallClock())])
        let gateway = scriptedGateway(.testing([Limit(calls: 1, window: .seconds(3600))]), store: store, upstream: upstream)
        try await gateway.start()
        let id = try #require(try await gateway.submitted(actionID(1)).id)
        #expect(await value(gateway, #"mdegate_queue_depth_by_client{client="uid 1000/test"}"#) == 1)
        _ = try await gateway.withdraw(id).get()
        #expect(await value(gateway, #"mdegate_queue_depth_by_client{client="uid 1000/test"}"#) == nil, "gone with its last request")

        #expect(await value(gateway, #"mdegate_quota_limit_calls{api="cancel",limit="1/1h"}"#) == 1)
        try await gateway.loosen(to: [Limit(calls: 5, window: .seconds(3600))])
        #expect(await value(gateway, #"mdegate_quota_limit_calls{api="cancel",limit="1/1h"}"#) == nil)
        #expect(await value(gateway, #"mdegate_quota_limit_calls{api="cancel",limit="5/1h"}"#) == 5)
        try await gateway.drain().get()
    }
}
