import DequeModule

/// The scheduling policy: which queued request goes upstream next, and when.
///
/// - Every upstream API is a *lane* with its own quota (a `QuotaLedger`), its own 429 pause and
///   its own queues, so a saturated API never delays a request for another one.
/// - In a lane, every client has its own FIFO queue; clients are served round-robin, so a tool
///   that queues 10,000 cancels does not starve one that queues 3.
/// - A request for the same API and target (say, a cancel of a machine action id) as one already
///   queued or being sent joins that *job*: one upstream call, and every member gets the answer.
/// - An attempt starts only when its lane's ledger allows it, never while its lane is paused, and
///   never beyond `maxConcurrency` attempts in flight over all lanes.
///
/// It is a value with no I/O and no clock: the caller passes the time in, runs `nextDispatch`
/// until it returns nil, then sets a timer for `nextWakeup` (the exact next free slot, no polling).
public struct Scheduler: Sendable {
    /// One upstream call on behalf of one or more requests for the same machine action.
    public struct Job: Sendable, Equatable {
        public enum State: Sendable, Equatable {
            case queued
            /// Waiting out a retry backoff; rejoins the head of its client's queue when due.
            case backingOff(until: Timestamp)
            case sending
        }

        /// The id of the request that created the job; coalesced requests "joined" it.
        public let id: RequestID
        /// The upstream API the job calls: the lane it waits in and the ledger it spends.
        public let api: UpstreamAPI
        /// What the call is about (a machine action id for `cancel`), as the first request
        /// spelled it: sent upstream as is, and compared case-insensitively for coalescing.
        public let target: String
        /// The client whose queue the job waits in.
        public let client: ClientID
        /// The requests waiting for this job's answer, in arrival order.
        public internal(set) var members: [RequestID]
        public internal(set) var state: State
        /// Every attempt made, throttled ones included (each is in the ledger).
        public internal(set) var attempts: Int
        /// Attempts that failed (5xx or no answer); these are limited by `RetryPolicy.maxAttempts`.
        public internal(set) var failures: Int
        /// The upstream already refused this job's token once (401); a second refusal is final.
        public internal(set) var reauthorized = false
        /// An attempt of this job may have reached the upstream (any outcome but `.notSent`): from
        /// then on it can no longer be withdrawn. A job whose attempts could not be stored, and so
        /// never left, still can.
        public internal(set) var left: Bool

        /// A job as recovered from durable state (see `Scheduler.restore`).
        public init(
            id: RequestID, api: UpstreamAPI, target: String, client: ClientID, members: [RequestID],
            state: State = .queued, attempts: Int = 0, failures: Int = 0
        ) {
            self.id = id
            self.api = api
            self.target = target
            self.client = client
            self.members = members
            self.state = state
            self.attempts = attempts
            self.failures = failures
            // Recovered from the store, which does not say whether an attempt left: assume it did.
            self.left = attempts > 0
        }
    }

    /// The answer to a submission.
    public enum Admission: Sendable, Equatable {
        /// A new job, waiting in the client's queue.
        case queued
        /// Coalesced: the request rides on the job of request `leader`.
        case joined(leader: RequestID)
        /// `maxPending` requests are already waiting.
        case queueFull
    }

    /// The answer to a withdrawal.
    public enum Withdrawal: Sendable, Equatable {
        /// Removed; `jobCancelled` tells whether it was the job's last member.
        case withdrawn(jobCancelled: Bool)
        /// Its job has already been sent at least once: too late to withdraw.
        case alreadySent
        /// Not pending here (unknown, or already finished).
        case notPending
    }

    /// An attempt the caller must now send upstream. The ledger already counts it.
    public struct Dispatch: Sendable, Equatable {
        public var job: RequestID
        public var api: UpstreamAPI
        public var target: String
        public var members: [RequestID]
        /// 1 for the first attempt of this job.
        public var attempt: Int
    }

    /// What the scheduler decided after an attempt finished.
    public enum Resolution: Sendable, Equatable {
        /// The answer is final for all `members` (success, a 4xx, or retries used up).
        case finished(members: [RequestID], attempts: Int)
        /// A failure that will be retried at `at`.
        case retrying(at: Timestamp, attempts: Int)
        /// A 429: the job's API pauses until `until`, and the job is back at its queue's head.
        case throttled(until: Timestamp)
        /// The attempt was not sent: every lane pauses a while (the store, not the API, failed;
        /// `until` is when the job's own lane resumes) and the job is back at its queue's head,
        /// without using a retry (the slot it took stays spent).
        case notSent(until: Timestamp)
        /// A first 401: the token was refused. The job is back at its queue's head, to be sent
        /// once more with a new token; the refused attempt counts like any other.
        case reauthorizing
    }

    public private(set) var retryPolicy: RetryPolicy
    public private(set) var maxConcurrency: Int
    public private(set) var maxPending: Int
    /// The pause used when a 429 carries no `Retry-After`.
    public static let defaultThrottlePause: Duration = .seconds(60)
    /// The pause after an attempt could not be recorded (the state store failed): short, so
    /// dispatch resumes soon after the store does, and slots are not spent at full rate meanwhile.
    public static let notSentPause: Duration = .seconds(1)

    private var jobs = SlotTable<Job>()
    /// Which job a request belongs to.
    /// Only for requests that joined another's job: a job's id is the id of the request that
    /// created it, so the usual single-request job needs no entry (see `jobID(of:)`).
    private var jobOfRequest: [RequestID: RequestID] = [:]
    /// The unfinished job for each API and target.
    private var jobOfTarget: [TargetKey: RequestID] = [:]
    /// One lane per API, in the order of `apis`; `laneOfAPI` finds one by name.
    private var lanes: [Lane]
    private let laneOfAPI: [UpstreamAPI: Int]
    /// The lane `nextDispatch` looks at first: lanes take turns, so under the concurrency cap one
    /// busy API does not take every slot in flight.
    private var nextLane = 0
    public private(set) var inFlight = 0

    /// `ledgers`: one for every API that requests may be submitted to. Which APIs exist is the
    /// caller's business; the scheduler treats them all alike.
    public init(
        ledgers: [UpstreamAPI: any QuotaLedger],
        retryPolicy: RetryPolicy,
        maxConcurrency: Int,
        maxPending: Int
    ) {
        precondition(!ledgers.isEmpty, "a scheduler needs at least one API")
        let apis = ledgers.keys.sorted()
        self.lanes = apis.map { Lane(api: $0, ledger: ledgers[$0]!) }
        self.laneOfAPI = Dictionary(uniqueKeysWithValues: apis.enumerated().map { ($1, $0) })
        self.retryPolicy = retryPolicy
        self.maxConcurrency = max(1, maxConcurrency)
        self.maxPending = max(1, maxPending)
    }

    /// The APIs this scheduler has a lane for, by name.
    public var apis: [UpstreamAPI] { lanes.map(\.api) }

    /// The quota of `api`, for status.
    public func ledger(_ api: UpstreamAPI) -> any QuotaLedger {
        lanes[lane(api)].ledger
    }

    /// No attempt for `api` starts before this instant (set by an upstream 429, or by a failed
    /// store for all lanes). Nil when it was never paused.
    public func pausedUntil(_ api: UpstreamAPI) -> Timestamp? {
        lanes[lane(api)].pausedUntil
    }

    /// Requests not finished yet (queued, backing off, or being sent), coalesced ones included.
    public private(set) var pendingRequests = 0
    /// Requests whose job is being sent right now, coalesced ones included. Kept as a running
    /// count so that `queuedRequests` (what status shows) needs no scan of every request.
    public private(set) var sendingRequests = 0
    /// Requests waiting to be sent: queued or backing off (`pendingRequests - sendingRequests`).
    public var queuedRequests: Int { pendingRequests - sendingRequests }

    // MARK: Submitting and withdrawing

    /// Admits a request to call `api` about `target`, joining an unfinished job for the same API
    /// and target if any.
    public mutating func submit(
        _ request: RequestID,
        api: UpstreamAPI,
        target: String,
        client: ClientID
    ) -> Admission {
        let laneIndex = lane(api)
        guard pendingRequests < maxPending else { return .queueFull }
        pendingRequests += 1
        let key = TargetKey(api: api, target: target)
        if let leader = jobOfTarget[key] {
            jobs[leader]!.members.append(request)
            jobOfRequest[request] = leader
            if jobs[leader]!.state == .sending { sendingRequests += 1 }
            return .joined(leader: leader)
        }
        let job = Job(
            id: request, api: api, target: target, client: client,
            members: [request], state: .queued, attempts: 0, failures: 0)
        jobs[request] = job
        jobOfTarget[key] = request
        lanes[laneIndex].enqueue(request, of: client, atHead: false)
        return .queued
    }

    /// Puts back jobs recovered from durable state, in their original order: `restore(_:)` for
    /// each, with room made for all of them first (100,000 jobs restore in one growth, not 17).
    public mutating func restore(_ recovered: [Job]) {
        let requests = recovered.reduce(0) { $0 + $1.members.count }
        jobs.reserveCapacity(jobs.count + recovered.count)
        jobOfRequest.reserveCapacity(jobOfRequest.count + requests - recovered.count)
        jobOfTarget.reserveCapacity(jobOfTarget.count + recovered.count)
        for job in recovered { restore(job) }
    }

    /// Puts back a job recovered from durable state, exactly as it was, at the tail of its
    /// client's queue (recovery restores jobs in their original order).
    public mutating func restore(_ job: Job) {
        var job = job
        if job.state == .sending { job.state = .queued }
        // Whether an attempt left before the restart is not known: assume it did.
        if job.attempts > 0 { job.left = true }
        jobs[job.id] = job
        for member in job.members where member != job.id { jobOfRequest[member] = job.id }
        jobOfTarget[TargetKey(api: job.api, target: job.target)] = job.id
        pendingRequests += job.members.count
        let laneIndex = lane(job.api)
        switch job.state {
        case .queued, .sending: lanes[laneIndex].enqueue(job.id, of: job.client, atHead: false)
        case .backingOff(let until): lanes[laneIndex].backingOff[job.id] = (job.client, until)
        }
    }

    /// Withdraws a request that has not been sent. Once an attempt of its job may have reached the
    /// upstream, it is too late.
    public mutating func withdraw(_ request: RequestID) -> Withdrawal {
        guard let jobID = jobID(of: request), var job = jobs[jobID] else { return .notPending }
        guard !job.left, job.state == .queued else { return .alreadySent }
        job.members.removeAll { $0 == request }
        jobOfRequest[request] = nil
        pendingRequests -= 1
        if job.members.isEmpty {
            removeJob(job)
            lanes[lane(job.api)].dequeue(jobID, of: job.client)
            return .withdrawn(jobCancelled: true)
        }
        jobs[jobID] = job
        return .withdrawn(jobCancelled: false)
    }

    /// Takes back a request whose admission could not be stored (its client is told so), whatever
    /// its job's state: the job may have been dispatched in the same commit that failed, and so
    /// was never sent. A job left without members goes with it; its attempt stays in the ledger
    /// (the slot was taken, so it stays spent). False if the request is not pending here.
    public mutating func retract(_ request: RequestID) -> Bool {
        guard let jobID = jobID(of: request), var job = jobs[jobID] else { return false }
        job.members.removeAll { $0 == request }
        jobOfRequest[request] = nil
        pendingRequests -= 1
        if job.state == .sending { sendingRequests -= 1 }
        guard job.members.isEmpty else {
            jobs[jobID] = job
            return true
        }
        removeJob(job)
        let laneIndex = lane(job.api)
        switch job.state {
        case .sending: inFlight -= 1
        case .backingOff: lanes[laneIndex].backingOff[jobID] = nil
        case .queued: lanes[laneIndex].dequeue(jobID, of: job.client)
        }
        return true
    }

    // MARK: Dispatching

    /// The next attempt to send now, if the concurrency cap and, in some lane, the pause and
    /// every limit allow one. Records the attempt in that lane's ledger in the same step. Lanes
    /// take turns. Call until it returns nil.
    public mutating func nextDispatch(at now: Timestamp) -> Dispatch? {
        guard inFlight < maxConcurrency else { return nil }
        for turn in 0..<lanes.count {
            let laneIndex = (nextLane + turn) % lanes.count
            for jobID in lanes[laneIndex].dueRetries(at: now) { jobs[jobID]!.state = .queued }
            guard let jobID = lanes[laneIndex].takeNext(at: now) else { continue }
            nextLane = (laneIndex + 1) % lanes.count
            return dispatch(jobID)
        }
        return nil
    }

    private mutating func dispatch(_ jobID: RequestID) -> Dispatch {
        jobs[jobID]!.state = .sending
        jobs[jobID]!.attempts += 1
        inFlight += 1
        let job = jobs[jobID]!
        sendingRequests += job.members.count
        return Dispatch(
            job: jobID, api: job.api, target: job.target, members: job.members,
            attempt: job.attempts)
    }

    /// How many attempts of `api` could start at `now` if its ledger allowed them: the ones a
    /// ledger that is asked elsewhere (`SharedLedger`) should have slots for.
    public func startableAttempts(_ api: UpstreamAPI, at now: Timestamp) -> Int {
        lanes[lane(api)].startable(at: now, capacity: max(0, maxConcurrency - inFlight))
    }

    /// Changes `api`'s ledger if it is an `L` (the answers a `SharedLedger` receives).
    public mutating func updateLedger<L: QuotaLedger>(_ api: UpstreamAPI, as type: L.Type, _ body: (inout L) -> Void) {
        lanes[lane(api)].updateLedger(as: type, body)
    }

    /// Tells `api`'s ledger that the attempt dispatched at `dispatched` left only at `departed`
    /// (after it was stored); see `Ledger.restamp`.
    public mutating func attemptDeparted(_ api: UpstreamAPI, dispatchedAt dispatched: Timestamp, at departed: Timestamp) {
        lanes[lane(api)].restamp(dispatched, to: departed)
    }

    /// When `nextDispatch` may next return an attempt, if nothing else happens first; nil when
    /// only a finishing attempt or a new request can change anything. Never earlier than `now`.
    public func nextWakeup(after now: Timestamp) -> Timestamp? {
        guard inFlight < maxConcurrency else { return nil }
        return lanes.compactMap { $0.nextWakeup(after: now) }.min()
    }

    /// Takes the outcome of an attempt and decides what follows for its job.
    /// `jitter` is a random number in `0..<1` for the retry backoff.
    public mutating func finish(
        _ jobID: RequestID,
        outcome: AttemptOutcome,
        at now: Timestamp,
        jitter: Double
    ) -> Resolution {
        guard var job = jobs[jobID], job.state == .sending else {
            preconditionFailure("finish(\(jobID)) for a job that is not being sent")
        }
        inFlight -= 1
        sendingRequests -= job.members.count
        if outcome != .notSent { job.left = true }
        switch outcome {
        case .answered(status: 429, let retryAfter):
            let laneIndex = lane(job.api)
            lanes[laneIndex].pause(until: now + (retryAfter ?? Self.defaultThrottlePause))
            putBack(job)
            return .throttled(until: lanes[laneIndex].pausedUntil!)
        case .notSent:
            pauseAll(until: now + Self.notSentPause)
            putBack(job)
            return .notSent(until: lanes[lane(job.api)].pausedUntil!)
        case .answered(status: 401, _) where !job.reauthorized:
            job.reauthorized = true
            putBack(job)
            return .reauthorizing
        case .answered(let status, _) where status < 500:
            return finishJob(job)
        case .answered, .unanswered:
            job.failures += 1
            guard job.failures < retryPolicy.maxAttempts else { return finishJob(job) }
            let due = now + retryPolicy.backoff(afterFailures: job.failures, jitter: jitter)
            job.state = .backingOff(until: due)
            jobs[jobID] = job
            lanes[lane(job.api)].backingOff[jobID] = (job.client, due)
            return .retrying(at: due, attempts: job.attempts)
        }
    }

    // MARK: Configuration and state

    /// Applies reloaded settings; queues, jobs and the ledgers' attempts are kept. `limits` gives
    /// each API its limits (an API left out keeps its own). A reload that lengthens a ledger's
    /// horizon needs the attempts it already let go of, as `earlierAttempts[api]` (see
    /// `Ledger.reconfigure`).
    public mutating func reconfigure(
        limits: [UpstreamAPI: [Limit]], guardBand: Duration, retryPolicy: RetryPolicy,
        maxConcurrency: Int, maxPending: Int, earlierAttempts: [UpstreamAPI: [Timestamp]] = [:]
    ) {
        for (api, apiLimits) in limits {
            lanes[lane(api)].reconfigure(limits: apiLimits, guardBand: guardBand, earlier: earlierAttempts[api] ?? [])
        }
        self.retryPolicy = retryPolicy
        self.maxConcurrency = max(1, maxConcurrency)
        self.maxPending = max(1, maxPending)
    }

    /// Pauses `api` until `until` (a pause in force before a restart); a longer pause stays.
    public mutating func pause(_ api: UpstreamAPI, until: Timestamp) {
        lanes[lane(api)].pause(until: until)
    }

    /// Pauses every API until `until`: the store failed, which no API can get past.
    public mutating func pauseAll(until: Timestamp) {
        for index in lanes.indices { lanes[index].pause(until: until) }
    }

    /// The job a request belongs to, while it is unfinished.
    public func job(of request: RequestID) -> Job? {
        jobID(of: request).flatMap { jobs[$0] }
    }

    /// The unfinished job with this id (the id of the request that created it, which may since
    /// have been withdrawn or taken back while others ride on the job).
    public func job(id: RequestID) -> Job? {
        jobs[id]
    }

    /// Queued jobs per client over all lanes: clients in the order they are next served in the
    /// first lane they wait in.
    public func depthByClient() -> [(client: ClientID, depth: Int)] {
        var order: [ClientID] = []
        var depth: [ClientID: Int] = [:]
        for lane in lanes {
            for client in lane.rotation {
                if depth[client] == nil { order.append(client) }
                depth[client, default: 0] += lane.queues[client]?.count ?? 0
            }
        }
        return order.map { ($0, depth[$0]!) }
    }

    /// Queued jobs in `api`'s lane (not counting the ones backing off).
    public func queuedJobs(_ api: UpstreamAPI) -> Int {
        lanes[lane(api)].queuedJobs
    }

    /// The ends of `api`'s queues, for metrics: `first`, the job at the head of every client's
    /// queue and every job backing off (the longest waiting job is among them); `last`, the
    /// job at the tail of every client's queue (the last to leave is among them).
    public func queueEnds(_ api: UpstreamAPI) -> (first: [RequestID], last: [RequestID]) {
        let lane = lanes[lane(api)]
        return (lane.queues.values.compactMap(\.first) + lane.backingOff.keys, lane.queues.values.compactMap(\.last))
    }

    /// Where a queued request stands: its 1-based place in its lane's order of dispatch under
    /// round-robin, and the instant that place's slot opens if nothing else changes. Nil unless
    /// queued.
    ///
    /// Mutating only for a cache: the projection of the next slots is kept until the ledger
    /// changes, so answering 20,000 admissions a second does not copy the ledger 20,000 times.
    public mutating func position(of request: RequestID, at now: Timestamp) -> (
        position: Int, estimatedDispatchAt: Timestamp
    )? {
        guard let job = job(of: request), job.state == .queued else { return nil }
        return lanes[lane(job.api)].position(of: job.id, client: job.client, at: now)
    }

    /// How many of the next slots are projected exactly with the ledger; beyond them the estimate
    /// extrapolates at the pace of the tightest limit.
    static let exactSlots = 32

    // MARK: Internals

    private mutating func finishJob(_ job: Job) -> Resolution {
        removeJob(job)
        pendingRequests -= job.members.count
        return .finished(members: job.members, attempts: job.attempts)
    }

    /// The lane of `api`. Submitting to an API the scheduler was given no ledger for is a
    /// programming error: the gateway makes a lane for every API it routes.
    private func lane(_ api: UpstreamAPI) -> Int {
        guard let index = laneOfAPI[api] else { preconditionFailure("no lane for the upstream API \(api)") }
        return index
    }

    /// Puts a job whose attempt did not count as a failure back at the head of its client's queue.
    private mutating func putBack(_ job: Job) {
        var job = job
        job.state = .queued
        jobs[job.id] = job
        lanes[lane(job.api)].enqueue(job.id, of: job.client, atHead: true)
    }

    /// The job `request` belongs to while it is unfinished: its own, or the one it joined. A
    /// withdrawn leader is no member of the job that keeps its id.
    private func jobID(of request: RequestID) -> RequestID? {
        if let leader = jobOfRequest[request] { return leader }
        guard let job = jobs[request], job.members.contains(request) else { return nil }
        return request
    }

    private mutating func removeJob(_ job: Job) {
        jobs[job.id] = nil
        for member in job.members { jobOfRequest[member] = nil }
        let key = TargetKey(api: job.api, target: job.target)
        if jobOfTarget[key] == job.id { jobOfTarget[key] = nil }
    }
}
