import Foundation
import Logging
import MDEGateCore
import MDEGateTransport
import NIOCore

/// The heart of the daemon: admits requests, dispatches them upstream exactly when the quota
/// allows, and hands every waiter its answer.
///
/// The policy lives in `Scheduler` (pure); this actor owns its only instance and does the I/O
/// around it: the store (written before a 202 and before an attempt is sent), the upstream call,
/// the timer for the next free slot (one timer, set for the exact instant, no polling), and the
/// waiters of synchronous callers.
public actor Gateway {
    /// The settings a reload may change.
    public struct Settings: Sendable, Equatable {
        public var limits: [Limit]
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
    }

    /// The answer to a submission.
    public enum Admission: Sendable {
        /// Stored and queued (or joined onto a request for the same machine action).
        case accepted(RequestRecord)
        /// `queue.max_pending` requests are waiting already.
        case queueFull
    }

    /// The answer to a withdrawal.
    public enum Withdrawal: Sendable {
        case withdrawn(RequestRecordDocument)
        case alreadySent(RequestRecordDocument)
        case notFound
    }

    private var settings: Settings
    private var scheduler: Scheduler
    private var records = SlotTable<RequestRecord>()
    private var waiters: [RequestID: [Int: CheckedContinuation<RequestRecord, Never>]] = [:]
    private var nextWaiterID = 0
    private let store: any GatewayStore
    private var upstream: UpstreamClient
    private var tokens: any TokenSource
    private let logger: Logger
    private let eventLoop: any EventLoop
    private let now: @Sendable () -> Timestamp
    private var timer: Scheduled<Void>?
    private var timerDeadline: Timestamp?
    private var lastPurge = Timestamp.zero
    private var lastUpstreamStatus: Int?
    private var lastUpstreamError: String?
    /// What a failed write left out of the store, written again a second later or ahead of the
    /// next batch, whichever comes first.
    private var unsaved = UnsavedChanges()
    private var flushScheduled = false

    public init(
        settings: Settings,
        store: any GatewayStore,
        upstream: UpstreamClient,
        tokens: any TokenSource,
        eventLoop: any EventLoop,
        logger: Logger,
        now: @escaping @Sendable () -> Timestamp = Gateway.wallClock
    ) {
        self.settings = settings
        self.scheduler = Scheduler(
            ledger: Ledger(limits: settings.limits, guardBand: settings.guardBand),
            retryPolicy: settings.retryPolicy,
            maxConcurrency: settings.maxConcurrency,
            maxPending: settings.maxPending)
        self.store = store
        self.upstream = upstream
        self.tokens = tokens
        self.eventLoop = eventLoop
        self.logger = logger
        self.now = now
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
        scheduler = Scheduler(
            ledger: Ledger(limits: settings.limits, guardBand: settings.guardBand, attempts: state.attempts),
            retryPolicy: settings.retryPolicy,
            maxConcurrency: settings.maxConcurrency,
            maxPending: settings.maxPending,
            pausedUntil: state.pausedUntil)
        restore(state.records)
        watch(tokens)
        pump()
    }

    /// A token fetched (or not) in the background may let waiting work go.
    private func watch(_ source: any TokenSource) {
        source.onChange { Task { await self.pump() } }
    }

    /// Takes back the stored records, and rebuilds the jobs of requests that were queued or being
    /// sent, in their original order (the store returns records oldest first). A request that
    /// was being sent is queued again; its attempt already counts in the ledger.
    private func restore(_ stored: [RequestRecord]) {
        records.reserveCapacity(stored.count)
        // One entry per job, in the order of its first stored request; coalesced requests join
        // the job they joined (its id is the request that created it).
        var groups: [(first: RequestRecord, members: [RequestID], attempts: Int)] = []
        var place: [RequestID: Int] = [:]
        for var record in stored {
            if !record.state.isFinal {
                record.state = .queued
                let jobID = record.joined ?? record.id
                if let index = place[jobID] {
                    groups[index].members.append(record.id)
                    groups[index].attempts = max(groups[index].attempts, record.attempts)
                } else {
                    place[jobID] = groups.count
                    groups.append((record, [record.id], record.attempts))
                }
            }
            records[record.id] = record
        }
        scheduler.restore(
            groups.map { group in
                Scheduler.Job(
                    id: group.first.joined ?? group.first.id, machineActionID: group.first.machineActionID,
                    client: group.first.clientID, members: group.members, attempts: group.attempts,
                    // Failures are not stored apart from throttled attempts: count every attempt as
                    // one, which can only shorten the retries left, never add upstream calls.
                    failures: group.attempts)
            })
        if !groups.isEmpty { logger.notice("restored unfinished requests", metadata: ["jobs": "\(groups.count)"]) }
    }

    /// Applies reloaded settings and a new upstream (transport, base URL); the queue, the
    /// ledger's attempts and a pause are kept. Attempts in flight finish on the old transport.
    public func reconfigure(settings: Settings, upstream: UpstreamClient, tokens: any TokenSource) {
        self.settings = settings
        self.upstream = upstream
        if tokens !== self.tokens { watch(tokens) }
        self.tokens = tokens
        scheduler.reconfigure(
            limits: settings.limits, guardBand: settings.guardBand, retryPolicy: settings.retryPolicy,
            maxConcurrency: settings.maxConcurrency, maxPending: settings.maxPending)
        logger.notice(
            "configuration reloaded",
            metadata: ["limits": "\(settings.limits.map(\.spec).joined(separator: " + "))", "upstream": "\(upstream.baseURL)"])
        pump()
    }

    // MARK: Requests

    /// Admits a validated cancel. Returns once the request is stored (durable with a durable store).
    public func submit(machineActionID: String, comment: String, client: RequestRecord.Client) async throws -> Admission {
        let id = UUID().uuidString.lowercased()
        let clientID = ClientID(uid: client.uid, name: client.name)
        let joined: RequestID?
        switch scheduler.submit(id, machineActionID: machineActionID, client: clientID) {
        case .queueFull: return .queueFull
        case .queued: joined = nil
        case .joined(let leader): joined = leader
        }
        let job = scheduler.job(of: id)
        let record = RequestRecord(
            id: id, machineActionID: machineActionID, comment: comment, client: client,
            state: job?.state == .sending ? .sending : .queued, attempts: job?.attempts ?? 0,
            joined: joined, createdAt: now(), completedAt: nil, response: nil, lastError: nil)
        records[id] = record
        do {
            try await persist([.record(record)])
        } catch {
            _ = scheduler.withdraw(id)
            records[id] = nil
            logger.error("could not store a request", metadata: ["error": "\(error)"])
            throw error
        }
        logger.debug(
            "request admitted",
            metadata: [
                "request": "\(id)", "machineAction": "\(machineActionID)", "client": "\(clientID)",
                "joined": "\(joined ?? "-")",
            ])
        pump()
        return .accepted(records[id] ?? record)
    }

    /// Waits until the request is final, or `timeout` passes; returns the record either way
    /// (nil if the id is unknown).
    public func awaitFinal(_ id: RequestID, timeout: Duration?) async -> RequestRecord? {
        guard let record = records[id] else { return nil }
        if record.state.isFinal { return record }
        let waiterID = nextWaiterID
        nextWaiterID += 1
        if let timeout {
            eventLoop.scheduleTask(in: .nanoseconds(timeout.nanoseconds)) {
                Task { await self.expireWaiter(id, waiterID) }
            }
        }
        return await withCheckedContinuation { continuation in
            waiters[id, default: [:]][waiterID] = continuation
        }
    }

    /// Callers waiting for `id` to be final, for tests.
    func waiterCount(for id: RequestID) -> Int {
        waiters[id]?.count ?? 0
    }

    private func expireWaiter(_ id: RequestID, _ waiterID: Int) {
        guard let continuation = waiters[id]?.removeValue(forKey: waiterID), let record = records[id] else { return }
        continuation.resume(returning: record)
    }

    /// The record as clients see it, with its place in line if queued.
    public func document(_ id: RequestID) -> RequestRecordDocument? {
        guard let record = records[id] else { return nil }
        return document(for: record)
    }

    /// Withdraws a request that has not been sent.
    public func withdraw(_ id: RequestID) async throws -> Withdrawal {
        guard var record = records[id] else { return .notFound }
        if record.state == .withdrawn { return .withdrawn(document(for: record)) }
        switch scheduler.withdraw(id) {
        case .notPending, .alreadySent:
            return .alreadySent(document(for: record))
        case .withdrawn:
            record.state = .withdrawn
            record.completedAt = now()
            records[id] = record
            // A failed write is kept and written again shortly; the caller hears of it. Either
            // way the request is withdrawn here, so its waiters are answered now.
            defer {
                resumeWaiters(of: id)
                pump()
            }
            try await persist([.record(record)])
            logger.info("request withdrawn", metadata: ["request": "\(id)"])
            return .withdrawn(document(for: record))
        }
    }

    // MARK: Status

    public func status() -> StatusDocument {
        let time = now()
        let ledger = scheduler.ledger
        return StatusDocument(
            limits: settings.limits.map { limit in
                StatusDocument.LimitState(
                    spec: limit.spec, calls: limit.calls, windowSeconds: limit.window.seconds,
                    used: ledger.used(limit, at: time),
                    nextFreeAt: ledger.nextFree(limit, at: time).map(JSON.timestamp))
            },
            guardMs: Int(settings.guardBand.nanoseconds / 1_000_000),
            queue: .init(
                depth: records.values.reduce(0) { $0 + ($1.state == .queued ? 1 : 0) },
                clients: scheduler.depthByClient().map { .init(client: $0.client.description, depth: $0.depth) }),
            pausedUntil: scheduler.pausedUntil.flatMap { $0 > time ? JSON.timestamp($0) : nil },
            inFlight: scheduler.inFlight,
            upstream: .init(baseUrl: upstream.baseURL, lastStatus: lastUpstreamStatus, lastError: lastUpstreamError),
            auth: .init(mode: tokens.mode, tokenExpiresAt: tokens.tokenExpiresAt.map(JSON.timestamp), lastError: tokens.lastError))
    }

    // MARK: Dispatching

    /// Sends every attempt the quota allows now, then sets the timer for the next free slot.
    private func pump() {
        let time = now()
        purgeIfDue(at: time)
        var tokenProblem = false
        while true {
            // Check the token before spending a slot: an attempt that cannot be sent must not count.
            guard case .success(let token) = tokens.token(at: time) else {
                tokenProblem = true
                break
            }
            guard let dispatch = scheduler.nextDispatch(at: time) else { break }
            send(dispatch, token: token, at: time)
        }
        if tokenProblem, scheduler.nextWakeup(after: time) != nil {
            // Work is waiting but there is no token: ask again in a second (a token file is
            // looked at again; a token fetch in the background also wakes the gateway itself).
            setTimer(for: time + .seconds(1))
        } else {
            setTimer(for: scheduler.nextWakeup(after: time))
        }
    }

    private func send(_ dispatch: Scheduler.Dispatch, token: String, at time: Timestamp) {
        var changes: [StoreChange] = [.attempt(time)]
        for member in dispatch.members {
            records[member]?.state = .sending
            records[member]?.attempts = dispatch.attempt
            if let record = records[member] { changes.append(.record(record)) }
        }
        let comment = dispatch.members.first.flatMap { records[$0]?.comment } ?? ""
        logger.debug(
            "attempt starts",
            metadata: [
                "request": "\(dispatch.job)", "machineAction": "\(dispatch.machineActionID)",
                "attempt": "\(dispatch.attempt)",
            ])
        let upstream = self.upstream
        Task {
            // The ledger entry is stored before the call leaves, so a crash never forgets it. If
            // it cannot be stored, the call does not leave (see `notSent`).
            do {
                try await self.persist(changes)
            } catch {
                await self.notSent(dispatch, error: error)
                return
            }
            self.departs(dispatchedAt: time)
            let result = await upstream.cancel(machineActionID: dispatch.machineActionID, comment: comment, token: token)
            await self.finish(dispatch, token: token, result: result)
        }
    }

    /// The attempt could not be stored, so it was not sent: the job goes back to the head of its
    /// queue without using a retry, and dispatch pauses a moment (the state store is failing;
    /// sending on would spend the quota on calls that could not be recorded).
    private func notSent(_ dispatch: Scheduler.Dispatch, error: any Error) async {
        let members = scheduler.job(of: dispatch.job)?.members ?? dispatch.members
        _ = scheduler.finish(dispatch.job, outcome: .notSent, at: now(), jitter: 0)
        logger.error(
            "could not store an attempt, so it was not sent; dispatch pauses a second at a time until the state can be written",
            metadata: ["request": "\(dispatch.job)", "error": "\(error)"])
        let changes = requeue(members, lastError: "not sent yet: the state could not be written (\(error))")
        try? await persist(changes)
        pump()
    }

    /// The attempt leaves now, a little after its slot was taken (storing it took time): the
    /// ledger, in memory and then in the store, counts it from when the upstream can see it.
    private func departs(dispatchedAt time: Timestamp) {
        let departed = now()
        scheduler.attemptDeparted(dispatchedAt: time, at: departed)
        guard departed > time else { return }
        // Not awaited: the call leaves now. Until this commits, a crash recovers the attempt up
        // to one commit early, which the guard band covers.
        Task { try? await self.persist([.departure(recorded: time, departed: departed)]) }
    }

    private func finish(_ dispatch: Scheduler.Dispatch, token: String, result: Result<HTTPResponse, TransportError>) async {
        let time = now()
        let outcome: AttemptOutcome
        var answer: RequestRecord.Response?
        var failure: String?
        switch result {
        case .success(let response):
            outcome = .answered(status: response.status, retryAfter: retryAfter(response.header("Retry-After")))
            answer = .init(status: response.status, body: response.body, contentType: response.header("Content-Type"))
            lastUpstreamStatus = response.status
            lastUpstreamError = nil
        case .failure(let error):
            outcome = .unanswered
            failure = error.description
            lastUpstreamError = error.description
        }
        let members = scheduler.job(of: dispatch.job)?.members ?? dispatch.members
        let resolution = scheduler.finish(dispatch.job, outcome: outcome, at: time, jitter: Double.random(in: 0..<1))
        var changes: [StoreChange] = []
        switch resolution {
        case .finished(let finishedMembers, let attempts):
            for member in finishedMembers {
                guard var record = records[member] else { continue }
                record.attempts = attempts
                record.response = answer
                record.lastError = failure
                record.completedAt = time
                record.state = (answer.map { (200..<300).contains($0.status) } ?? false) ? .done : .failed
                records[member] = record
                changes.append(.record(record))
            }
            logger.info(
                "cancel finished",
                metadata: [
                    "request": "\(dispatch.job)", "machineAction": "\(dispatch.machineActionID)",
                    "status": "\(answer.map { String($0.status) } ?? "no answer")", "attempts": "\(attempts)",
                    "requests": "\(finishedMembers.count)",
                ].merging(failure.map { ["error": "\($0)"] } ?? [:]) { $1 })
        case .retrying(let at, let attempts):
            logger.notice(
                "attempt failed; retrying",
                metadata: [
                    "request": "\(dispatch.job)", "status": "\(answer.map { String($0.status) } ?? "no answer")",
                    "attempts": "\(attempts)", "retryAt": "\(JSON.timestamp(at))",
                ].merging(failure.map { ["error": "\($0)"] } ?? [:]) { $1 })
            changes += requeue(members, lastError: failure)
        case .notSent:
            // Only `notSent(_:error:)` reports this outcome.
            changes += requeue(members, lastError: nil)
        case .reauthorizing:
            // Fetch a new token (or look at the token file again) and send once more.
            logger.notice(
                "upstream answered 401: the access token was refused; sending once more after getting a token again",
                metadata: ["request": "\(dispatch.job)"])
            tokens.rejected(token)
            changes += requeue(members, lastError: nil)
        case .throttled(let until):
            logger.warning(
                "upstream answered 429: pausing all dispatch",
                metadata: ["request": "\(dispatch.job)", "pausedUntil": "\(JSON.timestamp(until))"])
            changes.append(.pause(until: until))
            changes += requeue(members, lastError: nil)
        }
        do {
            try await persist(changes)
        } catch {
            logger.error("could not store an outcome; it is written again within a second", metadata: ["error": "\(error)"])
        }
        if case .finished(let finishedMembers, _) = resolution {
            for member in finishedMembers { resumeWaiters(of: member) }
        }
        pump()
    }

    private func requeue(_ members: [RequestID], lastError: String?) -> [StoreChange] {
        members.compactMap { member in
            guard var record = records[member] else { return nil }
            record.state = .queued
            record.lastError = lastError
            if let job = scheduler.job(of: member) { record.attempts = job.attempts }
            records[member] = record
            return .record(record)
        }
    }

    private func resumeWaiters(of id: RequestID) {
        guard let record = records[id], let waiting = waiters.removeValue(forKey: id) else { return }
        for continuation in waiting.values { continuation.resume(returning: record) }
    }

    private func setTimer(for deadline: Timestamp?) {
        if deadline == timerDeadline, timer != nil { return }
        timer?.cancel()
        timer = nil
        timerDeadline = deadline
        guard let deadline else { return }
        let delay = max(deadline - now(), .zero)
        timer = eventLoop.scheduleTask(in: .nanoseconds(delay.nanoseconds)) {
            Task { await self.timerFired(deadline) }
        }
    }

    private func timerFired(_ deadline: Timestamp) {
        guard deadline == timerDeadline else { return }
        timer = nil
        timerDeadline = nil
        pump()
    }

    private func document(for record: RequestRecord) -> RequestRecordDocument {
        let place = record.state == .queued ? scheduler.position(of: record.id, at: now()) : nil
        return RequestRecordDocument(
            record: record, position: place?.position, estimatedDispatchAt: place?.estimatedDispatchAt)
    }

    /// Forgets finished records past their retention, at most once a minute.
    private func purgeIfDue(at time: Timestamp) {
        guard time - lastPurge >= .seconds(60) else { return }
        lastPurge = time
        let horizon = time - settings.retention
        let expired = records.values.filter { ($0.completedAt ?? time) < horizon }.map(\.id)
        guard !expired.isEmpty else { return }
        for id in expired { records[id] = nil }
        Task { try? await self.persist(expired.map { .forget($0) }) }
    }

    // MARK: Storing

    /// Writes `changes`, preceded by whatever an earlier failed write left out. On failure the
    /// whole batch is remembered: records by id (so the newest state is written, never an old
    /// one over a newer), attempts and departures as they are, the pause as a flag.
    private func persist(_ changes: [StoreChange]) async throws {
        let batch = unsaved.isEmpty ? changes : unsaved.takeChanges(records: records, pausedUntil: scheduler.pausedUntil) + changes
        do {
            try await store.apply(batch)
        } catch {
            unsaved.remember(batch)
            scheduleFlush()
            throw error
        }
    }

    /// Tries again a second after a failed write, until the store takes the changes.
    private func scheduleFlush() {
        guard !flushScheduled else { return }
        flushScheduled = true
        eventLoop.scheduleTask(in: .seconds(1)) { Task { await self.flushUnsaved() } }
    }

    /// Writes what failed writes left out, if anything: a second after a failure, and at
    /// shutdown before the store closes.
    public func flushUnsaved() async {
        flushScheduled = false
        guard !unsaved.isEmpty else { return }
        do {
            try await persist([])
            logger.notice("the state store took the changes an earlier failed write left out")
        } catch {
            // `persist` remembered them again and scheduled the next try.
        }
    }
}

/// Changes a failed write did not store.
struct UnsavedChanges {
    private var attempts: [StoreChange] = []
    private var records: Set<RequestID> = []
    private var pause = false

    var isEmpty: Bool { attempts.isEmpty && records.isEmpty && !pause }

    mutating func remember(_ changes: [StoreChange]) {
        for change in changes {
            switch change {
            case .attempt, .departure: attempts.append(change)
            case .record(let record): records.insert(record.id)
            case .forget(let id): records.insert(id)
            case .pause: pause = true
            }
        }
    }

    /// The changes that bring the store up to date with the gateway's state now, and forgets them.
    mutating func takeChanges(records current: SlotTable<RequestRecord>, pausedUntil: Timestamp?) -> [StoreChange] {
        var changes = attempts
        for id in records { changes.append(current[id].map(StoreChange.record) ?? .forget(id)) }
        if pause { changes.append(.pause(until: pausedUntil)) }
        self = UnsavedChanges()
        return changes
    }
}
