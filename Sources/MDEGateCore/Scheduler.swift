import DequeModule

/// The scheduling policy: which queued request goes upstream next, and when.
///
/// - Every client has its own FIFO queue; clients are served round-robin, so a tool that queues
///   10,000 cancels does not starve one that queues 3.
/// - A cancel for a machine action id that is already queued or being sent joins that *job*: one
///   upstream call, and every member gets the same answer.
/// - An attempt starts only when the `Ledger` allows it, never while paused by a 429, and never
///   beyond `maxConcurrency` attempts in flight.
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
        /// The machine action id as the first request spelled it (sent upstream as is).
        public let machineActionID: String
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
            id: RequestID, machineActionID: String, client: ClientID, members: [RequestID],
            state: State = .queued, attempts: Int = 0, failures: Int = 0
        ) {
            self.id = id
            self.machineActionID = machineActionID
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
        public var machineActionID: String
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
        /// A 429: the whole gateway pauses until `until`, and the job is back at its queue's head.
        case throttled(until: Timestamp)
        /// The attempt was not sent: dispatch pauses until `until` and the job is back at its
        /// queue's head, without using a retry (the slot it took stays spent).
        case notSent(until: Timestamp)
        /// A first 401: the token was refused. The job is back at its queue's head, to be sent
        /// once more with a new token; the refused attempt counts like any other.
        case reauthorizing
    }

    public private(set) var retryPolicy: RetryPolicy
    public private(set) var maxConcurrency: Int
    public private(set) var maxPending: Int
    /// No attempt starts before this instant (set by an upstream 429).
    public private(set) var pausedUntil: Timestamp?
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
    /// The unfinished job for each machine action id (lowercased: GUIDs compare case-insensitively).
    private var jobOfMachineAction: [String: RequestID] = [:]
    private var queues: [ClientID: Deque<RequestID>] = [:]
    /// Clients with queued jobs, in round-robin order: the first is served next.
    private var rotation: Deque<ClientID> = []
    /// Jobs waiting out a retry backoff, and when each is due.
    private var backingOff: [RequestID: Timestamp] = [:]
    public private(set) var inFlight = 0
    /// The next slots as projected from `start` (see `projection(notBefore:)`); dropped whenever
    /// the ledger changes (`nextDispatch`, `attemptDeparted`, `reconfigure`).
    private var projectionCache: (start: Timestamp, slots: [Timestamp])?
    public private(set) var ledger: Ledger

    public init(
        ledger: Ledger,
        retryPolicy: RetryPolicy,
        maxConcurrency: Int,
        maxPending: Int,
        pausedUntil: Timestamp? = nil
    ) {
        self.ledger = ledger
        self.retryPolicy = retryPolicy
        self.maxConcurrency = max(1, maxConcurrency)
        self.maxPending = max(1, maxPending)
        self.pausedUntil = pausedUntil
    }

    /// Requests not finished yet (queued, backing off, or being sent), coalesced ones included.
    public private(set) var pendingRequests = 0
    /// Requests whose job is being sent right now, coalesced ones included. Kept as a running
    /// count so that `queuedRequests` (what status shows) needs no scan of every request.
    public private(set) var sendingRequests = 0
    /// Requests waiting to be sent: queued or backing off (`pendingRequests - sendingRequests`).
    public var queuedRequests: Int { pendingRequests - sendingRequests }

    // MARK: Submitting and withdrawing

    /// Admits a request for `machineActionID`, joining an unfinished job for the same id if any.
    public mutating func submit(
        _ request: RequestID,
        machineActionID: String,
        client: ClientID
    ) -> Admission {
        guard pendingRequests < maxPending else { return .queueFull }
        pendingRequests += 1
        let key = Self.key(machineActionID)
        if let leader = jobOfMachineAction[key] {
            jobs[leader]!.members.append(request)
            jobOfRequest[request] = leader
            if jobs[leader]!.state == .sending { sendingRequests += 1 }
            return .joined(leader: leader)
        }
        let job = Job(
            id: request, machineActionID: machineActionID, client: client,
            members: [request], state: .queued, attempts: 0, failures: 0)
        jobs[request] = job
        jobOfMachineAction[key] = request
        enqueue(request, of: client, atHead: false)
        return .queued
    }

    /// Puts back jobs recovered from durable state, in their original order: `restore(_:)` for
    /// each, with room made for all of them first (100,000 jobs restore in one growth, not 17).
    public mutating func restore(_ recovered: [Job]) {
        let requests = recovered.reduce(0) { $0 + $1.members.count }
        jobs.reserveCapacity(jobs.count + recovered.count)
        jobOfRequest.reserveCapacity(jobOfRequest.count + requests - recovered.count)
        jobOfMachineAction.reserveCapacity(jobOfMachineAction.count + recovered.count)
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
        jobOfMachineAction[Self.key(job.machineActionID)] = job.id
        pendingRequests += job.members.count
        switch job.state {
        case .queued, .sending: enqueue(job.id, of: job.client, atHead: false)
        case .backingOff(let until): backingOff[job.id] = until
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
            queues[job.client]?.removeAll { $0 == jobID }
            if queues[job.client]?.isEmpty == true {
                queues[job.client] = nil
                rotation.removeAll { $0 == job.client }
            }
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
        switch job.state {
        case .sending: inFlight -= 1
        case .backingOff: backingOff[jobID] = nil
        case .queued:
            queues[job.client]?.removeAll { $0 == jobID }
            if queues[job.client]?.isEmpty == true {
                queues[job.client] = nil
                rotation.removeAll { $0 == job.client }
            }
        }
        return true
    }

    // MARK: Dispatching

    /// The next attempt to send now, if the pause, the concurrency cap and every limit allow one.
    /// Records the attempt in the ledger in the same step. Call until it returns nil.
    public mutating func nextDispatch(at now: Timestamp) -> Dispatch? {
        if let pausedUntil, now < pausedUntil { return nil }
        guard inFlight < maxConcurrency else { return nil }
        requeueDueRetries(at: now)
        guard let client = rotation.first, ledger.recordIfAllowed(at: now) else { return nil }
        projectionCache = nil
        let jobID = queues[client]!.removeFirst()
        rotation.removeFirst()
        if queues[client]!.isEmpty {
            queues[client] = nil
        } else {
            rotation.append(client)  // a client with more work waits for everyone else's turn
        }

        jobs[jobID]!.state = .sending
        jobs[jobID]!.attempts += 1
        inFlight += 1
        let job = jobs[jobID]!
        sendingRequests += job.members.count
        return Dispatch(
            job: jobID, machineActionID: job.machineActionID, members: job.members,
            attempt: job.attempts)
    }

    /// Tells the ledger that the attempt dispatched at `dispatched` left only at `departed`
    /// (after it was stored); see `Ledger.restamp`.
    public mutating func attemptDeparted(dispatchedAt dispatched: Timestamp, at departed: Timestamp) {
        ledger.restamp(dispatched, to: departed)
        projectionCache = nil
    }

    /// When `nextDispatch` may next return an attempt, if nothing else happens first; nil when
    /// only a finishing attempt or a new request can change anything. Never earlier than `now`.
    public func nextWakeup(after now: Timestamp) -> Timestamp? {
        guard inFlight < maxConcurrency else { return nil }
        let readyAt: Timestamp?
        if !rotation.isEmpty {
            readyAt = now
        } else {
            readyAt = backingOff.values.min()
        }
        guard let readyAt else { return nil }
        var wakeup = ledger.earliestSlot(notBefore: max(now, readyAt))
        if let pausedUntil { wakeup = max(wakeup, pausedUntil) }
        return wakeup
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
            let until = now + (retryAfter ?? Self.defaultThrottlePause)
            pausedUntil = max(pausedUntil ?? until, until)
            putBack(job)
            return .throttled(until: pausedUntil!)
        case .notSent:
            let until = now + Self.notSentPause
            pausedUntil = max(pausedUntil ?? until, until)
            putBack(job)
            return .notSent(until: pausedUntil!)
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
            backingOff[jobID] = due
            return .retrying(at: due, attempts: job.attempts)
        }
    }

    // MARK: Configuration and state

    /// Applies reloaded settings; queue, jobs and the ledger's attempts are kept. A reload that
    /// lengthens the ledger's horizon needs the attempts it already let go of, as `earlierAttempts`
    /// (see `Ledger.reconfigure`).
    public mutating func reconfigure(
        limits: [Limit], guardBand: Duration, retryPolicy: RetryPolicy,
        maxConcurrency: Int, maxPending: Int, earlierAttempts: [Timestamp] = []
    ) {
        ledger.reconfigure(limits: limits, guardBand: guardBand, earlier: earlierAttempts)
        projectionCache = nil
        self.retryPolicy = retryPolicy
        self.maxConcurrency = max(1, maxConcurrency)
        self.maxPending = max(1, maxPending)
    }

    /// Restores a pause that was in force before a restart.
    public mutating func pause(until: Timestamp) {
        pausedUntil = max(pausedUntil ?? until, until)
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

    /// Queued jobs per client, in rotation order (the next client served first).
    public func depthByClient() -> [(client: ClientID, depth: Int)] {
        rotation.map { ($0, queues[$0]?.count ?? 0) }
    }

    /// Where a queued request stands: its 1-based place in the order of dispatch under round-robin,
    /// and the instant that place's slot opens if nothing else changes. Nil unless queued.
    ///
    /// Mutating only for a cache: the projection of the next slots is kept until the ledger
    /// changes, so answering 20,000 admissions a second does not copy the ledger 20,000 times.
    public mutating func position(of request: RequestID, at now: Timestamp) -> (
        position: Int, estimatedDispatchAt: Timestamp
    )? {
        guard let job = job(of: request), job.state == .queued, let queue = queues[job.client],
            let turn = rotation.firstIndex(of: job.client)
        else { return nil }
        // Search from the back: a request just admitted (the common question) is at or near the end.
        guard let index = queue.lastIndex(of: job.id) else { return nil }
        // Jobs sent before it: its own client's earlier ones, and from every other client as many
        // as rounds pass (one more from the clients ahead of it in this round).
        var ahead = index
        for (place, other) in rotation.enumerated() where other != job.client {
            ahead += min(queues[other]!.count, place < turn ? index + 1 : index)
        }
        let start = max(now, pausedUntil ?? now)
        return (ahead + 1, estimatedSlot(ahead, notBefore: start))
    }

    /// How many of the next slots are projected exactly with the ledger; beyond them the estimate
    /// extrapolates at the pace of the tightest limit, so a request deep in a long queue is cheap.
    static let exactSlots = 32

    /// The instant of the `index`-th next slot (0-based), from the cached projection.
    private mutating func estimatedSlot(_ index: Int, notBefore start: Timestamp) -> Timestamp {
        let projected = projection(notBefore: start)
        let remaining = index - (projected.count - 1)
        guard remaining > 0 else { return projected[index] }
        let paces = ledger.limits.map { Double(($0.window + ledger.guardBand).nanoseconds) / Double($0.calls) }
        let pace = paces.max() ?? 0
        return projected.last! + .nanoseconds(Int64(pace * Double(remaining)))
    }

    /// The next `exactSlots` slots from `start`. A projection made from an earlier start holds
    /// as long as the ledger did not change and `start` is not past its first slot: no instant
    /// between that start and the first slot is allowed, so both starts lead to the same slots.
    private mutating func projection(notBefore start: Timestamp) -> [Timestamp] {
        if let cached = projectionCache, cached.start <= start, start <= cached.slots[0] {
            return cached.slots
        }
        let slots = ledger.projectedSlots(count: Self.exactSlots, notBefore: start)
        projectionCache = (start, slots)
        return slots
    }

    // MARK: Internals

    private mutating func finishJob(_ job: Job) -> Resolution {
        removeJob(job)
        pendingRequests -= job.members.count
        return .finished(members: job.members, attempts: job.attempts)
    }

    /// The id as `jobOfMachineAction` knows it: lowercased, sharing the id's own storage when it
    /// is lowercase already (as most tools send it), so 100,000 queued jobs hold no second copy.
    private static func key(_ machineActionID: String) -> String {
        let lowered = machineActionID.lowercased()
        return lowered == machineActionID ? machineActionID : lowered
    }

    /// Puts a job whose attempt did not count as a failure back at the head of its client's queue.
    private mutating func putBack(_ job: Job) {
        var job = job
        job.state = .queued
        jobs[job.id] = job
        enqueue(job.id, of: job.client, atHead: true)
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
        let key = Self.key(job.machineActionID)
        if jobOfMachineAction[key] == job.id { jobOfMachineAction[key] = nil }
    }

    /// Moves jobs whose backoff is over to the head of their clients' queues.
    private mutating func requeueDueRetries(at now: Timestamp) {
        guard !backingOff.isEmpty else { return }
        let due = backingOff.filter { $0.value <= now }.sorted { ($0.value, $0.key) < ($1.value, $1.key) }
        for (jobID, _) in due.reversed() {
            backingOff[jobID] = nil
            jobs[jobID]!.state = .queued
            enqueue(jobID, of: jobs[jobID]!.client, atHead: true)
        }
    }

    private mutating func enqueue(_ jobID: RequestID, of client: ClientID, atHead: Bool) {
        let wasIdle = queues[client] == nil
        if atHead {
            queues[client, default: []].prepend(jobID)
        } else {
            queues[client, default: []].append(jobID)
        }
        if wasIdle {
            // A job put back after a 429 or a backoff was already this client's turn: serve it first.
            if atHead { rotation.prepend(client) } else { rotation.append(client) }
        }
    }
}
