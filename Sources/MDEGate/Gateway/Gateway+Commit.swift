import MDEGateCore
import NIOCore

/// The commit cycle: one batch in the store at a time.
///
/// Every change (a new request, an attempt, an outcome) goes into `pending`. When no commit is
/// being written, `commitIfIdle` pumps (takes what the quota allows now into the same batch)
/// and cuts it: one transaction for everything that happened since the last one. When the
/// commit returns, the follow-ups run in that one turn: attempts leave, callers are answered.
///
/// - A request admitted while a slot is free is written with its attempt, in one transaction:
///   a synchronous cancel waits for one fsync.
/// - N slots that free at once (start-up with a backlog, a window rolling over) are N attempts in
///   one transaction, and leave together.
/// - A failed commit is reconciled before the next batch is cut: its admissions are taken back
///   (their callers hear 503) and its attempts are not sent. An attempt can only be in the
///   transaction of its request's admission or a later one, so no request the caller was told
///   was refused is ever sent, and none that was sent is unknown to the store.
/// - Outcomes and departures need no caller to wait: such a batch waits up to `lazyDelay` for
///   a commit that someone waits for, so a synchronous caller's commit carries the outcome of
///   the call before it instead of queueing behind it.
extension Gateway {
    /// How long changes that nobody waits for (outcomes, departures, purges) may wait for a
    /// commit that someone waits for. A crash within it may send such an answered request
    /// again after restart, as for any request in flight at a crash.
    static let lazyDelay: TimeAmount = .milliseconds(10)
    /// How soon a failed commit's changes are tried again when nothing else is written.
    static let retryDelay: TimeAmount = .seconds(1)

    /// Something may let an attempt start (a new request, a freed slot, a token): pump before
    /// the next cut, which is now if no commit is being written.
    func requestPump() {
        pumpWanted = true
        commitIfIdle()
    }

    /// Pumps and cuts the pending batch, unless a commit is being written (then this runs again
    /// when it is done). A batch nobody waits for waits `lazyDelay` for one somebody does.
    func commitIfIdle() {
        guard !committing else { return }
        if pumpWanted {
            pumpWanted = false
            pump()
        }
        guard pending.urgent || (!unsaved.isEmpty && retryFlush == nil) else {
            if !pending.isEmpty, lazyFlush == nil {
                lazyFlush = eventLoop.scheduleTask(in: Self.lazyDelay) {
                    self.assumeIsolated { $0.flushLazyChanges() }
                }
            }
            return
        }
        lazyFlush?.cancel()
        lazyFlush = nil
        let batch = pending
        pending = CommitBatch()
        let changes = unsaved.changes(records: records) + batch.changes(records: records)
        unsaved = ChangeSet()
        committing = true
        let loop = eventLoop
        let attempts = batch.attempts
        let upstream = self.upstream
        let now = self.now
        let metrics = self.metrics
        let cut = now()
        store.commit(changes) { result in
            switch result {
            case .success: metrics.storeCommit.record(now() - cut)
            case .failure: metrics.storeErrors.increment()
            }
            // The attempts leave from here, the thread the commit returned on, without waiting
            // for the loop: one thread hand-off less before the upstream sees them. The loop
            // records their departure in the same turn as the rest of the batch.
            var departures: [Timestamp] = []
            if case .success = result {
                departures.reserveCapacity(attempts.count)
                for attempt in attempts {
                    let departure = now()
                    departures.append(departure)
                    upstream.send(attempt.call, token: attempt.token) { outcome in
                        let took = now() - departure
                        loop.execute {
                            self.assumeIsolated {
                                $0.finish(attempt.dispatch, token: attempt.token, result: outcome, took: took)
                            }
                        }
                    }
                }
            }
            let left = departures
            loop.execute {
                self.assumeIsolated { $0.committed(batch, changes: changes, result: result, departures: left) }
            }
        }
    }

    private func flushLazyChanges() {
        lazyFlush = nil
        if !pending.isEmpty { pending.urgent = true }
        commitIfIdle()
    }

    private func committed(
        _ batch: CommitBatch, changes: [StoreChange], result: Result<Void, any Error>, departures: [Timestamp]
    ) {
        // `committing` stays set until the follow-ups are done: answering a caller writes to its
        // connection, which hands NIO the next pipelined request at once, and that request must
        // not cut a batch in the middle of this reconciliation.
        defer {
            committing = false
            commitIfIdle()
        }
        switch result {
        case .success:
            // The attempts left already (see `commitIfIdle`); an answer may even be back, which
            // `finish` handled, and a waiter registered below then finds its request final.
            for (attempt, instant) in zip(batch.attempts, departures) {
                departed(
                    attempt.dispatch, dispatchedAt: attempt.dispatchedAt, eligibleSince: attempt.eligibleSince, at: instant)
            }
            for followUp in batch.followUps {
                switch followUp {
                case .attempt: break
                case .admission(let id, let waiting, let promise): admitted(id, waiting: waiting, promise: promise)
                case .withdrawal(let id, let promise):
                    promise.succeed(records[id].map { .withdrawn(document(for: $0)) } ?? .notFound)
                case .drained(let promise): promise.succeed(())
                }
            }
        case .failure(let error):
            unsaved.remember(changes)
            scheduleRetry()
            // Dispatch pauses a second: sending on would spend the quota on attempts that cannot
            // be recorded (also when the attempt's job goes with its refused request below).
            if !batch.attempts.isEmpty { scheduler.pauseAll(until: now() + Scheduler.notSentPause) }
            // Admissions first: a job admitted and dispatched in this batch goes with its request.
            for case .admission(let id, _, let promise) in batch.followUps {
                _ = scheduler.retract(id)
                records[id] = nil
                pending.write(id)  // written as a deletion, whatever else holds it
                resumeWaiters(of: id)
                logger.error("could not store a request; it was refused", metadata: ["request": "\(id)", "error": "\(error)"])
                promise.succeed(.storeUnavailable("\(error)"))
            }
            for followUp in batch.followUps {
                switch followUp {
                case .admission: break
                case .attempt(let dispatch, _, _, _, _): notSent(dispatch, error: error)
                // Withdrawn in memory (its waiters were answered); written again later.
                case .withdrawal(_, let promise): promise.fail(error)
                case .drained(let promise): promise.fail(error)
                }
            }
            if !batch.followUps.isEmpty { pumpWanted = true }
        }
    }

    /// Writes what failed commits left out again `retryDelay` later, unless another commit
    /// carries it first.
    private func scheduleRetry() {
        guard retryFlush == nil else { return }
        retryFlush = eventLoop.scheduleTask(in: Self.retryDelay) {
            self.assumeIsolated { gateway in
                gateway.retryFlush = nil
                if !gateway.unsaved.isEmpty { gateway.logger.notice("writing again what a failed commit left out") }
                gateway.commitIfIdle()
            }
        }
    }

    /// At shutdown, before the store closes: stops dispatching, lets the attempts in flight
    /// finish (for at most `limit`), then commits everything pending, outcomes included, and
    /// answers once that is stored. An attempt still in flight after `limit` is cut off by the
    /// transport's shutdown; its request is still `sending` in the store and is sent again after
    /// the restart (its attempt counts).
    public func drain(waitingAtMost limit: TimeAmount = .seconds(10)) -> EventLoopFuture<Void> {
        stopping = true
        let promise = eventLoop.makePromise(of: Void.self)
        drains.append(promise)
        eventLoop.scheduleTask(in: limit) {
            self.assumeIsolated { $0.commitDrains(inFlightOrNot: true) }
        }
        commitDrains(inFlightOrNot: false)
        return promise.futureResult
    }

    /// Commits for the callers of `drain` once no attempt is in flight (or the wait is over).
    func commitDrains(inFlightOrNot force: Bool) {
        guard !drains.isEmpty, force || scheduler.inFlight == 0 else { return }
        for promise in drains { pending.followUp(.drained(promise)) }
        drains = []
        retryFlush?.cancel()
        retryFlush = nil
        commitIfIdle()
    }
}

/// Changes on their way to the store: records by id, written in the state they have when the
/// changes are taken (so several changes of one record are one row, and the newest state is
/// written, never an old one over a newer; a record gone by then is deleted), and attempts,
/// departures and pauses as they were, in order.
struct ChangeSet {
    private var recordIDs: [RequestID] = []
    private var marked: Set<RequestID> = []
    private var other: [StoreChange] = []

    var isEmpty: Bool { recordIDs.isEmpty && other.isEmpty }

    mutating func write(_ id: RequestID) {
        if marked.insert(id).inserted { recordIDs.append(id) }
    }

    mutating func append(_ change: StoreChange) {
        other.append(change)
    }

    /// Takes changes back that a failed commit did not store.
    mutating func remember(_ changes: [StoreChange]) {
        for change in changes {
            switch change {
            case .attempt, .departure, .pause: append(change)
            case .record(let record): write(record.id)
            case .forget(let id): write(id)
            }
        }
    }

    /// The changes as the store takes them, with each record as it is now.
    func changes(records: SlotTable<RequestRecord>) -> [StoreChange] {
        var changes = other
        changes.reserveCapacity(other.count + recordIDs.count)
        for id in recordIDs { changes.append(records[id].map(StoreChange.record) ?? .forget(id)) }
        return changes
    }
}

/// The changes and follow-ups waiting for the next commit.
struct CommitBatch {
    /// What runs, in the turn the commit returns, for what the batch carried.
    enum FollowUp {
        /// A new request: answer its caller, or start waiting for its answer.
        case admission(RequestID, Gateway.Waiting, EventLoopPromise<Gateway.Answer>)
        /// An attempt: it leaves as soon as the commit returned. `eligibleSince`: when it could
        /// have left (its dispatch lag is counted from there).
        case attempt(
            Scheduler.Dispatch, token: String, call: UpstreamCall, dispatchedAt: Timestamp, eligibleSince: Timestamp)
        case withdrawal(RequestID, EventLoopPromise<Gateway.Withdrawal>)
        case drained(EventLoopPromise<Void>)
    }

    private var changeSet = ChangeSet()
    private(set) var followUps: [FollowUp] = []
    /// Someone waits for this batch: it is cut as soon as no commit is being written.
    var urgent = false

    var isEmpty: Bool { changeSet.isEmpty && followUps.isEmpty }

    /// The record `id` is written in the state it has when the batch is cut.
    mutating func write(_ id: RequestID) { changeSet.write(id) }

    mutating func append(_ change: StoreChange) { changeSet.append(change) }

    mutating func followUp(_ followUp: FollowUp) {
        followUps.append(followUp)
        urgent = true
    }

    /// The attempts the batch carries, in the order they were dispatched.
    var attempts: [
        (dispatch: Scheduler.Dispatch, token: String, call: UpstreamCall, dispatchedAt: Timestamp, eligibleSince: Timestamp)
    ] {
        followUps.compactMap { followUp in
            guard case .attempt(let dispatch, let token, let call, let time, let eligible) = followUp else { return nil }
            return (dispatch, token, call, time, eligible)
        }
    }

    func changes(records: SlotTable<RequestRecord>) -> [StoreChange] { changeSet.changes(records: records) }
}
