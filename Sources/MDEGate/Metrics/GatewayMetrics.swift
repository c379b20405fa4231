import CoreMetrics
import MDEGateCore
import Prometheus
import Synchronization

/// The daemon's Prometheus metrics (README "Metrics and alerts"), in one registry per daemon.
///
/// Two kinds, kept apart so that the request path pays almost nothing:
/// - **Events** (admissions, attempts, answers, commits) are counted where they happen, through
///   swift-metrics' `Counter` and `Timer` on handles made once here: a lookup in a small dictionary
///   and an atomic add, or for a histogram a lock only a scrape ever shares.
/// - **States** (queue depth, quota used, pauses, token expiry) are read from the gateway when
///   Prometheus asks (`Gateway.metricsExposition`), on the gateway's loop: they cost the request
///   path nothing at all.
///
/// The handles come from swift-prometheus's registry rather than swift-metrics' global factory:
/// only the registry carries help texts (Prometheus and `promtool check metrics` want them), and
/// a registry per daemon keeps several gateways in one test process apart.
public final class GatewayMetrics: Sendable {
    /// What an upstream attempt came to, as `mdegate_upstream_attempts_total{result}` spells it.
    enum AttemptResult: Int, CaseIterable {
        case success, clientError, throttled, serverError, noAnswer, other

        var label: String {
            switch self {
            case .success: "2xx"
            case .clientError: "4xx"
            case .throttled: "429"
            case .serverError: "5xx"
            case .noAnswer: "no_answer"
            case .other: "other"
            }
        }

        init(status: Int?) {
            switch status {
            case nil: self = .noAnswer
            case 429: self = .throttled
            case .some(200..<300): self = .success
            case .some(400..<500): self = .clientError
            case .some(500..<600): self = .serverError
            default: self = .other
            }
        }
    }

    /// The metrics of one upstream API (one lane of the scheduler).
    struct APIMetrics: Sendable {
        let admittedSync: CoreMetrics.Counter
        let admittedAsync: CoreMetrics.Counter
        let coalesced: CoreMetrics.Counter
        let done: CoreMetrics.Counter
        let failed: CoreMetrics.Counter
        let withdrawn: CoreMetrics.Counter
        /// By `AttemptResult.rawValue`.
        let attempts: [CoreMetrics.Counter]
        let queueWait: CoreMetrics.Timer
        let dispatchLag: CoreMetrics.Timer
        let upstreamDuration: CoreMetrics.Timer
        let paused: CoreMetrics.Meter
        let queued: CoreMetrics.Meter
        let oldestQueued: CoreMetrics.Meter
        let expectedWait: CoreMetrics.Meter
        let overdue: CoreMetrics.Meter
    }

    public let registry: PrometheusCollectorRegistry
    private let factory: PrometheusMetricsFactory
    /// In `Route.apis` order; `api(_:)` finds one.
    private let apis: [UpstreamAPI: APIMetrics]
    let storeCommit: CoreMetrics.Timer
    let storeErrors: CoreMetrics.Counter
    let tokenSuccesses: CoreMetrics.Counter
    let tokenFailures: CoreMetrics.Counter
    let queueDepth: CoreMetrics.Meter
    let inFlight: CoreMetrics.Meter
    let tokenExpiry: CoreMetrics.Meter
    /// Series whose labels come and go (limits after a reload, client names): made at a scrape,
    /// dropped at the scrape that no longer sees them.
    private let dynamic = Mutex(DynamicSeries())

    /// Histogram buckets in seconds. Queue waits run up to the hour's quota and beyond; dispatch
    /// lag is a few milliseconds when all is well; commits are one fsync.
    static let queueWaitBuckets: [Duration] = [
        .milliseconds(10), .milliseconds(50), .milliseconds(100), .milliseconds(500), .seconds(1), .seconds(5),
        .seconds(15), .seconds(30), .seconds(60), .seconds(120), .seconds(300), .seconds(600), .seconds(900),
        .seconds(1800), .seconds(3600), .seconds(5400), .seconds(7200),
    ]
    static let dispatchLagBuckets: [Duration] = [
        .microseconds(500), .milliseconds(1), .milliseconds(2), .milliseconds(5), .milliseconds(10),
        .milliseconds(25), .milliseconds(50), .milliseconds(100), .milliseconds(250), .milliseconds(500), .seconds(1),
    ]
    static let upstreamDurationBuckets: [Duration] = [
        .milliseconds(10), .milliseconds(25), .milliseconds(50), .milliseconds(100), .milliseconds(250),
        .milliseconds(500), .seconds(1), .milliseconds(2500), .seconds(5), .seconds(10), .seconds(30), .seconds(60),
    ]
    static let storeCommitBuckets: [Duration] = [
        .microseconds(500), .milliseconds(1), .milliseconds(2), .milliseconds(5), .milliseconds(10),
        .milliseconds(25), .milliseconds(50), .milliseconds(100), .milliseconds(250), .seconds(1),
    ]

    public init(apis routed: [UpstreamAPI] = Route.apis) {
        let registry = PrometheusCollectorRegistry()
        let factory = PrometheusMetricsFactory(registry: registry)
        self.registry = registry
        self.factory = factory

        func counter(_ name: String, _ labels: [(String, String)], _ help: String) -> CoreMetrics.Counter {
            CoreMetrics.Counter(
                label: name, dimensions: labels,
                handler: registry.counter(name, labels, help: help), factory: factory)
        }
        func timer(_ name: String, _ labels: [(String, String)], _ buckets: [Duration], _ help: String) -> CoreMetrics.Timer {
            CoreMetrics.Timer(
                label: name, dimensions: labels,
                handler: registry.histogram(name, labels, buckets: buckets, help: help),
                factory: factory)
        }
        func meter(_ name: String, _ labels: [(String, String)], _ help: String) -> CoreMetrics.Meter {
            CoreMetrics.Meter(
                label: name, dimensions: labels,
                handler: registry.gauge(name, labels, help: help), factory: factory)
        }

        var apis: [UpstreamAPI: APIMetrics] = [:]
        for api in routed {
            let label = ("api", api.name)
            let admitted = "Requests admitted (stored and accepted), by upstream API and how the caller waits."
            let finished = "Requests that reached a final state, by upstream API and state."
            apis[api] = APIMetrics(
                admittedSync: counter("mdegate_requests_admitted_total", [label, ("mode", "sync")], admitted),
                admittedAsync: counter("mdegate_requests_admitted_total", [label, ("mode", "async")], admitted),
                coalesced: counter(
                    "mdegate_requests_coalesced_total", [label],
                    "Requests admitted onto another request's upstream call (same API and target)."),
                done: counter("mdegate_requests_finished_total", [label, ("state", "done")], finished),
                failed: counter("mdegate_requests_finished_total", [label, ("state", "failed")], finished),
                withdrawn: counter("mdegate_requests_finished_total", [label, ("state", "withdrawn")], finished),
                attempts: AttemptResult.allCases.map { result in
                    counter(
                        "mdegate_upstream_attempts_total", [label, ("result", result.label)],
                        "Upstream attempts, each one in the quota ledger, by upstream API and what came back.")
                },
                queueWait: timer(
                    "mdegate_queue_wait_seconds", [label], Self.queueWaitBuckets,
                    "Time from a request's admission to its first attempt leaving, by upstream API."),
                dispatchLag: timer(
                    "mdegate_dispatch_lag_seconds", [label], Self.dispatchLagBuckets,
                    "Time from the instant an attempt could leave (a slot freed, a pause or backoff ended, or its request came in) to the instant it left."),
                upstreamDuration: timer(
                    "mdegate_upstream_duration_seconds", [label], Self.upstreamDurationBuckets,
                    "Time from an attempt leaving to its answer (or its failure), by upstream API."),
                paused: meter(
                    "mdegate_paused", [label],
                    "1 while the upstream API is paused after a 429 (until its Retry-After), else 0."),
                queued: meter(
                    "mdegate_queued_calls", [label],
                    "Upstream calls waiting in the API's queue (requests that coalesced share one)."),
                oldestQueued: meter(
                    "mdegate_queue_oldest_seconds", [label],
                    "Age of the longest waiting request in the API's queue (queued, or backing off before a retry); 0 when none waits."),
                expectedWait: meter(
                    "mdegate_queue_expected_wait_seconds", [label],
                    "How long the quota alone makes the upstream API's queue wait: from now to the projected slot of its last queued request."),
                overdue: meter(
                    "mdegate_queue_overdue_seconds", [label],
                    "How long the upstream API's queue has waited although its quota and pause allowed a call; 0 while the quota explains the wait."))
        }
        self.apis = apis
        storeCommit = timer(
            "mdegate_store_commit_seconds", [], Self.storeCommitBuckets,
            "Time to write one batch of changes to the state file (one SQLite transaction and its fsync).")
        storeErrors = counter(
            "mdegate_store_errors_total", [], "Failed writes or reads of the state file.")
        let tokens = "Token requests to the identity platform, by result."
        tokenSuccesses = counter("mdegate_token_requests_total", [("result", "success")], tokens)
        tokenFailures = counter("mdegate_token_requests_total", [("result", "failure")], tokens)
        queueDepth = meter("mdegate_queue_depth", [], "Queued requests (not yet sent), over every upstream API.")
        inFlight = meter("mdegate_inflight_attempts", [], "Upstream attempts sent and not yet answered.")
        // The codes a caller's input can be refused with exist from the start, at 0.
        for code in Self.rejectionCodes { _ = registry.counter(Self.rejectedName, [("code", code)], help: Self.rejectedHelp) }
        tokenExpiry = meter(
            "mdegate_token_expiry_timestamp_seconds", [],
            "When the access token in hand expires (Unix time); 0 when there is none or its source does not say.")
    }

    /// The metrics of `api`; nil for an API the gateway does not route (never on its paths).
    func api(_ api: UpstreamAPI) -> APIMetrics? { apis[api] }

    /// Counts a request that was refused before it became one (bad input, a full queue, a
    /// state file that could not be written), by the error code its caller heard.
    func rejected(code: String) {
        registry.counter(Self.rejectedName, [("code", code)], help: Self.rejectedHelp).increment()
    }

    private static let rejectedName = "mdegate_requests_rejected_total"
    private static let rejectedHelp =
        "Requests refused before they became a request (bad input, a full queue, a store failure), by error code."
    /// The error codes of refused calls (the README's list); others (404, 405) appear when first seen.
    static let rejectionCodes = [
        "InvalidMachineActionId", "InvalidMachineId", "InvalidRequestBody", "InvalidQuery", "QueueFull", "StoreUnavailable",
    ]

    /// Counts a token request to the identity platform.
    func tokenRequest(succeeded: Bool) {
        (succeeded ? tokenSuccesses : tokenFailures).increment()
    }

    /// The registry as Prometheus's text format (version 0.0.4).
    public func exposition() -> [UInt8] {
        registry.emitToBuffer()
    }

    public static let contentType = "text/plain; version=0.0.4; charset=utf-8"

    // MARK: Scrape-time series

    /// The states that are read at a scrape rather than counted on the way.
    struct Snapshot {
        struct LimitUse {
            var api: UpstreamAPI
            var spec: String
            var calls: Int
            var used: Int
        }
        struct APIState {
            var api: UpstreamAPI
            var paused: Bool
            var queued: Int
            var oldestQueued: Duration
            var expectedWait: Duration
            var overdue: Duration
        }
        var limits: [LimitUse]
        var apis: [APIState]
        var queueDepth: Int
        var clients: [(client: String, depth: Int)]
        var inFlight: Int
        var tokenExpiresAt: Timestamp?
        /// nil without a shared quota.
        var sharedQuotaUp: Bool?
    }

    private struct DynamicSeries {
        var limitCalls = GaugeFamily(
            name: "mdegate_quota_limit_calls",
            help: "Calls the limit allows in its window, by upstream API and limit (as configured, e.g. 100/1m).")
        var limitUsed = GaugeFamily(
            name: "mdegate_quota_used_calls",
            help: "Calls counted in the limit's window now (this host's, guard band included), by upstream API and limit.")
        var clients = GaugeFamily(
            name: "mdegate_queue_depth_by_client",
            help: "Queued requests by client (Mdegate-Client name, or uid); only clients with requests queued.")
        var sharedQuotaUp: Prometheus.Gauge?
    }

    /// A gauge whose label sets come and go: each scrape sets the series it sees, and drops the
    /// ones it no longer sees.
    private struct GaugeFamily {
        let name: String
        let help: String
        private var series: [[String]: Prometheus.Gauge] = [:]

        init(name: String, help: String) {
            self.name = name
            self.help = help
        }

        mutating func set(_ values: [(labels: [(String, String)], value: Double)], in registry: PrometheusCollectorRegistry) {
            var kept: [[String]: Prometheus.Gauge] = [:]
            for (labels, value) in values {
                let key = labels.flatMap { [$0.0, $0.1] }
                let gauge = series.removeValue(forKey: key) ?? registry.gauge(name, labels, help: help)
                gauge.set(value)
                kept[key] = gauge
            }
            for gauge in series.values { registry.unregisterGauge(gauge) }
            series = kept
        }
    }

    /// Sets every scrape-time series from `snapshot`; series of limits or clients that are gone
    /// are dropped, so the label sets stay those in use.
    func update(_ snapshot: Snapshot) {
        for state in snapshot.apis {
            guard let metrics = apis[state.api] else { continue }
            metrics.paused.set(state.paused ? 1 : 0)
            metrics.queued.set(state.queued)
            metrics.oldestQueued.set(state.oldestQueued.seconds)
            metrics.expectedWait.set(state.expectedWait.seconds)
            metrics.overdue.set(state.overdue.seconds)
        }
        queueDepth.set(snapshot.queueDepth)
        inFlight.set(snapshot.inFlight)
        tokenExpiry.set(snapshot.tokenExpiresAt.map { Double($0.nanosecondsSinceEpoch) / 1e9 } ?? 0)

        let registry = self.registry
        dynamic.withLock { series in
            let limits = snapshot.limits.map { limit in (limit, [("api", limit.api.name), ("limit", limit.spec)]) }
            series.limitCalls.set(limits.map { ($1, Double($0.calls)) }, in: registry)
            series.limitUsed.set(limits.map { ($1, Double($0.used)) }, in: registry)
            series.clients.set(snapshot.clients.map { ([("client", $0.client)], Double($0.depth)) }, in: registry)

            if let up = snapshot.sharedQuotaUp {
                let gauge = series.sharedQuotaUp
                    ?? registry.gauge(
                        "mdegate_shared_quota_up", [],
                        help: "1 while the shared quota's PostgreSQL answers slot requests, 0 while it does not (nothing is sent then).")
                gauge.set(up ? 1.0 : 0.0)
                series.sharedQuotaUp = gauge
            }
        }
    }
}

extension PrometheusCollectorRegistry {
    // Full names with their help texts (swift-prometheus builds the name from parts; these
    // names are spelled whole, as the README and the alert rules spell them).
    fileprivate func counter(_ name: String, _ labels: [(String, String)], help: String) -> Prometheus.Counter {
        makeCounter(descriptor: MetricNameDescriptor(metricName: name, unitName: "", helpText: help), labels: labels)
    }

    fileprivate func gauge(_ name: String, _ labels: [(String, String)], help: String) -> Prometheus.Gauge {
        makeGauge(descriptor: MetricNameDescriptor(metricName: name, unitName: "", helpText: help), labels: labels)
    }

    fileprivate func histogram(
        _ name: String, _ labels: [(String, String)], buckets: [Duration], help: String
    ) -> DurationHistogram {
        makeDurationHistogram(
            descriptor: MetricNameDescriptor(metricName: name, unitName: "", helpText: help), labels: labels,
            buckets: buckets)
    }
}

extension CoreMetrics.Timer {
    /// Records a `Timestamp` difference; a negative one (clock stepped back) as zero.
    func record(_ duration: Duration) {
        recordNanoseconds(max(duration.nanoseconds, 0))
    }
}
