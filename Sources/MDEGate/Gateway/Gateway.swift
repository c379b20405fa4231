import Foundation
import Logging
import MDEGateCore
import MDEGateTransport
import MDEGateWire
import NIOCore

/// The heart of the daemon: admits requests, dispatches them upstream exactly when the quota
/// allows, and hands every waiter its answer.
///
/// **One event loop.** The actor runs on a SwiftNIO event loop (its executor is the loop), the
/// same loop that serves the Unix socket's connections. A request that arrives on a connection
/// enters the gateway synchronously (`assumeIsolated`), and timers, store commits and upstream
/// answers come back as plain event-loop callbacks: no task is created and no thread is crossed
/// between the socket and the gateway. Threads are crossed only where the work is elsewhere:
/// GRDB's writer (an fsync) and libcurl's thread (the network). See docs/architecture.md.
///
/// **One commit at a time.** Every change waits in `pending` and is written in the next commit
/// (see `Gateway+Commit.swift`); the pump decides dispatches only when that batch is cut, so an
/// attempt is in the same transaction as, or a later one than, the admission of its request,
/// and a failed commit is reconciled (admissions refused, attempts not sent) before the next
/// batch is cut. What the caller hears and what the upstream sees therefore always agree.
///
/// The policy lives in `Scheduler` (pure); this actor owns its only instance and does the I/O
/// around it.
public actor Gateway {
    /// The settings a reload may change.
    public struct Settings: Sendable, Equatable {
        /// Every API's limits, unless `apiLimits` names it.
        public var limits: [Limit]
        /// Limits of single APIs that differ from `limits` (`quota.apis.<name>`).
        public var apiLimits: [UpstreamAPI: [Limit]] = [:]
        public var guardBand: Duration
        public var retryPolicy: RetryPolicy
        public var maxConcurrency: Int
        public var maxPending: Int
        /// How long finished requests stay readable (`GET /v1/requests/{id}`).
        public var retention: Duration = .seconds(86_400)

        public init(limits: [Limit], guardBand: Duration, retryPolicy: RetryPolicy, maxConcurrency: Int, maxPending: Int) {
            self.limits = limits
            self.guardBand = guardBand
            self.retryPolicy = retryPolicy
            self.maxConcurrency = maxConcurrency
            self.maxPending = maxPending
        }

        /// The limits in force for `api`.
        public func limits(for api: UpstreamAPI) -> [Limit] {
            apiLimits[api] ?? limits
        }

        /// Every routed API's limits.
        var limitsByAPI: [UpstreamAPI: [Limit]] {
            Dictionary(uniqueKeysWithValues: Route.apis.map { ($0, limits(for: $0)) })
        }
    }

    /// How long the caller of `submit` waits.
    public enum Waiting: Sendable, Equatable {
        /// Until the request is stored (`Prefer: respond-async`).
        case untilStored
        /// Until the request is final, or `timeout` passes (`Prefer: wait=N`); nil: no limit.
        case untilFinal(timeout: Duration?)
    }

    /// What the caller of `submit` (or `wait`) hears.
    public enum Answer: Sendable {
        /// Stored: the record as clients see it, with its place in line while queued.
        case accepted(RequestRecordDocument)
        /// Final (done, failed or withdrawn).
        case final(RequestRecord)
        /// `queue.max_pending` requests are waiting already.
        case queueFull
        /// The request could not be stored, so it was not accepted and nothing was sent.
        case storeUnavailable(String)
        /// No such request.
        case notFound
    }

    /// The answer to a withdrawal.
    public enum Withdrawal: Sendable {
        case withdrawn(RequestRecordDocument)
        case alreadySent(RequestRecordDocument)
        case notFound
    }

    /// The loop the gateway runs on; the Unix socket's connections are served on it too.
    public nonisolated let eventLoop: any EventLoop
    private nonisolated let executor: any SerialExecutor
    public nonisolated var unownedExecutor: UnownedSerialExecutor { executor.asUnownedSerialExecutor() }

    var settings: Settings
    var scheduler: Scheduler
    var records = SlotTable<RequestRecord>()
    var waiters: [RequestID: [Waiter]] = [:]
    var nextWaiterID = 0
    let store: any GatewayStore
    var upstream: any Upstream
    var tokens: any TokenSource
    let logger: Logger
    let now: @Sendable () -> Timestamp
    var timer: Scheduled<Void>?
    var timerDeadline: Timestamp?
    var lastPurge = Timestamp.zero
    var lastUpstreamStatus: Int?
    var lastUpstreamError: String?
    /// Prometheus metrics: events are counted on the way, states read at a scrape.
    public nonisolated let metrics: GatewayMetrics
    /// The deadline of the timer that fired, until the pump it asked for has run: attempts that
    /// pump starts could leave from that instant (their dispatch lag counts from it).
    var timerFiredFor: Timestamp?
    /// When each API's last attempt left, for `mdegate_queue_overdue_seconds`.
    var lastDeparture: [UpstreamAPI: Timestamp] = [:]
    /// Each API's attempts per minute over the last hour, for status's picture.
    var timelines: [UpstreamAPI: AttemptTimeline] = [:]
    /// The ledger shared with other hosts, when `shared_quota.url` is set (Gateway+SharedQuota).
    let sharedQuota: SharedQuotaLink?
    var sharedHealth = SharedQuotaHealth()
    var slotRoundTrips = RoundTripLog()

    // The commit cycle (Gateway+Commit.swift).
    /// Changes and follow-ups waiting for the next commit.
    var pending = CommitBatch()
    /// A commit is being written; the next batch is cut when it is done.
    var committing = false
    /// Something happened that may let an attempt start: pump before the next cut.
    var pumpWanted = false
    /// What a failed commit left out of the store, written again with the next batch.
    var unsaved = ChangeSet()
    var lazyFlush: Scheduled<Void>?
    var retryFlush: Scheduled<Void>?
    /// Shutting down (`drain`): nothing new is dispatched.
    var stopping = false
    /// Callers of `drain` waiting for the attempts in flight to finish.
    var drains: [EventLoopPromise<Void>] = []

    /// A caller waiting for a request to be final, and its `Prefer: wait=N` timer.
    struct Waiter {
        let id: Int
        let promise: EventLoopPromise<Answer>
        var timeout: Scheduled<Void>?
    }

    public init(
        settings: Settings,
        store: any GatewayStore,
        upstream: any Upstream,
        tokens: any TokenSource,
        eventLoop: any EventLoop,
        logger: Logger,
        sharedQuota: SharedQuotaLink? = nil,
        metrics: GatewayMetrics = GatewayMetrics(),
        now: @escaping @Sendable () -> Timestamp = Gateway.wallClock
    ) {
        self.settings = settings
        self.metrics = metrics
        self.sharedQuota = sharedQuota
        self.scheduler = Self.scheduler(settings: settings, attempts: [:], shared: sharedQuota != nil)
        self.store = store
        self.upstream = upstream
        self.tokens = tokens
        self.eventLoop = eventLoop
        self.executor = eventLoop.executor
        self.logger = logger
        self.now = now
    }

    /// A scheduler with one lane for each API the gateway routes, each with a ledger of its
    /// configured limits holding its `attempts`: a `Ledger` when this host spends the quota
    /// alone, a `SharedLedger` (slots granted by the database) when it shares it.
    static func scheduler(settings: Settings, attempts: [UpstreamAPI: [Timestamp]], shared: Bool) -> Scheduler {
        Scheduler(
            ledgers: Dictionary(
                uniqueKeysWithValues: Route.apis.map { api in
                    let limits = settings.limits(for: api)
                    let ledger: any QuotaLedger =
                        shared
                        ? SharedLedger(limits: limits, guardBand: settings.guardBand, attempts: attempts[api] ?? [])
                        : Ledger(limits: limits, guardBand: settings.guardBand, attempts: attempts[api] ?? [])
                    return (api, ledger)
                }),
            retryPolicy: settings.retryPolicy,
            maxConcurrency: settings.maxConcurrency,
            maxPending: settings.maxPending)
    }

    /// The wall clock: the ledger must stay valid across restarts, which a monotonic clock is not.
    @Sendable public static func wallClock() -> Timestamp {
        var spec = timespec()
        clock_gettime(CLOCK_REALTIME, &spec)
        return Timestamp(nanosecondsSinceEpoch: Int64(spec.tv_sec) * 1_000_000_000 + Int64(spec.tv_nsec))
    }

    /// Reloads what the store kept (ledger, pause, unfinished requests) and starts dispatching.
    public func start() async throws {
        let state = try await store.load()
        scheduler = Self.scheduler(settings: settings, attempts: state.attempts, shared: sharedQuota != nil)
        timelines = state.attempts.mapValues { AttemptTimeline(attempts: $0) }
        for (api, until) in state.pauses where Route.named(api) != nil { scheduler.pause(api, until: until) }
        restore(state.records)
        watch(tokens)
        warmUpSharedQuota()
        requestPump()
    }

    /// A token fetched (or not) in the background may let waiting work go.
    private func watch(_ source: any TokenSource) {
        let loop = eventLoop
        source.onChange {
            loop.execute { self.assumeIsolated { $0.requestPump() } }
        }
    }

    /// Applies reloaded settings and a new upstream (transport, base URL); the queue, the
    /// ledger's attempts and a pause are kept. Attempts in flight finish on the old upstream.
    ///
    /// A reload that lengthens the longest window (or the guard band) first reads the attempts
    /// the ledger has already let go of back from the store, so the longer window counts them;
    /// if they cannot be read, the reload is refused (throws) and the running settings stay.
    public func reconfigure(settings: Settings, upstream: any Upstream, tokens: any TokenSource) async throws {
        var earlier: [UpstreamAPI: [Timestamp]] = [:]
        let horizons = Route.apis.map { Ledger.horizon(limits: settings.limits(for: $0), guardBand: settings.guardBand) }
        let lengthens = zip(Route.apis, horizons).contains { api, horizon in horizon > scheduler.ledger(api).horizon }
        if lengthens, let longest = horizons.max() {
            earlier = try await store.attempts(since: now() - longest)
        }
        self.settings = settings
        self.upstream = upstream
        if tokens !== self.tokens { watch(tokens) }
        self.tokens = tokens
        scheduler.reconfigure(
            limits: settings.limitsByAPI, guardBand: settings.guardBand, retryPolicy: settings.retryPolicy,
            maxConcurrency: settings.maxConcurrency, maxPending: settings.maxPending, earlierAttempts: earlier)
        logger.notice(
            "configuration reloaded",
            metadata: ["limits": "\(settings.limits.map(\.spec).joined(separator: " + "))", "upstream": "\(upstream.baseURL)"])
        requestPump()
    }

    /// Runs `body` on the gateway's loop, isolated: for callers that are on the loop already
    /// (the socket's connections) it runs at once, with no hop.
    nonisolated func onLoop<T: Sendable>(_ body: @escaping @Sendable (isolated Gateway) -> EventLoopFuture<T>) -> EventLoopFuture<T> {
        if eventLoop.inEventLoop { return assumeIsolated { body($0) } }
        return eventLoop.flatSubmit { self.assumeIsolated { body($0) } }
    }
}
