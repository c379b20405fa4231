import Foundation
import Logging
import MDEGateCore
import MDEGateTransport
import MDEGateWire
import NIOCore

/// Dispatching: what the quota allows now goes into the next commit, and leaves once that
/// committed; answers come back from libcurl's thread as one event-loop callback each.
extension Gateway {
    /// Takes every attempt the quota allows now into the pending batch (the ledger counts each
    /// one from this instant), then sets the timer for the next free slot. Runs only just before
    /// a batch is cut (`commitIfIdle`), never while a commit is being written.
    func pump() {
        guard !stopping else { return }
        let time = now()
        purgeIfDue(at: time)
        // Attempts started now could leave from when the timer was due, if it is what woke us.
        let eligibleSince = timerFiredFor.map { min($0, time) } ?? time
        timerFiredFor = nil
        var tokenProblem = false
        while true {
            // Check the token before spending a slot: an attempt that cannot be sent must not count.
            guard case .success(let token) = tokens.token(at: time) else {
                tokenProblem = true
                break
            }
            guard let dispatch = scheduler.nextDispatch(at: time) else { break }
            prepare(dispatch, token: token, at: time, eligibleSince: eligibleSince)
        }
        // A slot of the shared quota is asked for only when an attempt could use it at once.
        if !tokenProblem { askSharedSlots(at: time) }
        if tokenProblem, scheduler.nextWakeup(after: time) != nil {
            // Work is waiting but there is no token: ask again in a second (a token file is
            // looked at again; a token fetch in the background also wakes the gateway itself).
            setTimer(for: time + .seconds(1))
        } else {
            setTimer(for: scheduler.nextWakeup(after: time))
        }
    }

    /// Puts the attempt and its requests' new state into the pending batch; it is sent once
    /// that batch committed (see `commitIfIdle`).
    private func prepare(_ dispatch: Scheduler.Dispatch, token: String, at time: Timestamp, eligibleSince: Timestamp) {
        for member in dispatch.members {
            records[member]?.state = .sending
            records[member]?.attempts = dispatch.attempt
            pending.write(member)
        }
        // Every member asked for the same call (that is what coalescing means); the first one's
        // comment is sent.
        guard let call = dispatch.members.lazy.compactMap({ self.records[$0]?.call }).first,
            let route = Route.named(call.api)
        else {
            preconditionFailure("job \(dispatch.job) was dispatched without a record to send")
        }
        logger.debug(
            "attempt starts",
            metadata: [
                "request": "\(dispatch.job)", "api": "\(dispatch.api)", "target": "\(call.target)",
                "attempt": "\(dispatch.attempt)",
            ])
        pending.append(.attempt(dispatch.api, time))
        pending.followUp(
            .attempt(
                dispatch, token: token, call: route.upstreamCall(for: call), dispatchedAt: time, eligibleSince: eligibleSince))
    }

    /// The attempt left at `departed`, a little after its slot was taken at `time` (storing it
    /// took that long): the ledger counts it from its departure, and the store learns of it in
    /// a later commit.
    func departed(
        _ dispatch: Scheduler.Dispatch, dispatchedAt time: Timestamp, eligibleSince: Timestamp, at departed: Timestamp
    ) {
        scheduler.attemptDeparted(dispatch.api, dispatchedAt: time, at: departed)
        if departed > time { pending.append(.departure(dispatch.api, recorded: time, departed: departed)) }
        if sharedQuota != nil { delayLateAttempts(dispatch.api) }
        lastDeparture[dispatch.api] = max(departed, lastDeparture[dispatch.api] ?? departed)
        timelines[dispatch.api, default: AttemptTimeline()].record(at: departed)
        let metrics = self.metrics.api(dispatch.api)
        metrics?.dispatchLag.record(departed - eligibleSince)
        // The end of the queue wait of every member not sent before (a request that joined a
        // job being retried waited until this attempt). Written with the outcome.
        for member in dispatch.members where records[member]?.sentAt == nil {
            guard let createdAt = records[member]?.createdAt else { continue }
            records[member]?.sentAt = departed
            metrics?.queueWait.record(departed - createdAt)
        }
    }

    /// The attempt's commit failed, so it was not sent: the job goes back to the head of its
    /// queue without using a retry, and dispatch pauses a moment (sending on would spend the
    /// quota on calls that could not be recorded).
    func notSent(_ dispatch: Scheduler.Dispatch, error: any Error) {
        guard let job = scheduler.job(id: dispatch.job), job.state == .sending else { return }
        _ = scheduler.finish(dispatch.job, outcome: .notSent, at: now(), jitter: 0)
        logger.error(
            "could not store an attempt, so it was not sent; dispatch pauses a second at a time until the state can be written",
            metadata: ["request": "\(dispatch.job)", "error": "\(error)"])
        requeue(job.members, lastError: "not sent yet: the state could not be written (\(error))")
    }

    /// An attempt's answer (or failure), `took` after it left.
    func finish(
        _ dispatch: Scheduler.Dispatch, token: String, result: Result<TransportResponse, TransportError>, took: Duration
    ) {
        defer { commitDrains(inFlightOrNot: false) }
        guard scheduler.job(id: dispatch.job)?.state == .sending else {
            // Cannot happen: only a sent attempt is answered, and a sent job is never taken back.
            // Logged rather than trusted, so that a daemon never stops over it.
            logger.error("an answer came for a job that is not being sent; it is ignored", metadata: ["request": "\(dispatch.job)"])
            return
        }
        let time = now()
        let apiMetrics = metrics.api(dispatch.api)
        apiMetrics?.upstreamDuration.record(took)
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
        apiMetrics?.attempts[GatewayMetrics.AttemptResult(status: answer?.status).rawValue].increment()
        let members = scheduler.job(id: dispatch.job)?.members ?? dispatch.members
        let resolution = scheduler.finish(dispatch.job, outcome: outcome, at: time, jitter: Double.random(in: 0..<1))
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
                (record.state == .done ? apiMetrics?.done : apiMetrics?.failed)?.increment()
                pending.write(member)
                // The caller is answered now; the outcome is written with the next commit.
                resumeWaiters(of: member)
            }
            // One line per request: who asked, what, and how it ended (a coalesced request
            // has its own line, naming the request it rode on).
            for member in finishedMembers {
                guard let record = records[member] else { continue }
                var metadata: Logger.Metadata = [
                    "request": "\(member)", "api": "\(record.call.api)", "target": "\(record.call.target)",
                    "uid": "\(record.client.uid)", "pid": "\(record.client.pid)",
                    "status": "\(answer.map { String($0.status) } ?? "no answer")", "attempts": "\(attempts)",
                    "durationMs": "\(((time - record.createdAt).seconds * 1000).rounded())",
                ]
                if let sentAt = record.sentAt {
                    metadata["queueWaitMs"] = "\(((sentAt - record.createdAt).seconds * 1000).rounded())"
                }
                if let name = record.client.name { metadata["client"] = "\(name)" }
                if member != dispatch.job { metadata["joined"] = "\(dispatch.job)" }
                if let failure { metadata["error"] = "\(failure)" }
                logger.info("request finished", metadata: metadata)
            }
        case .retrying(let at, let attempts):
            logger.notice(
                "attempt failed; retrying",
                metadata: [
                    "request": "\(dispatch.job)", "status": "\(answer.map { String($0.status) } ?? "no answer")",
                    "attempts": "\(attempts)", "retryAt": "\(JSON.timestamp(at))",
                ].merging(failure.map { ["error": "\($0)"] } ?? [:]) { $1 })
            requeue(members, lastError: failure)
        case .notSent:
            // Only `notSent(_:error:)` reports this outcome.
            requeue(members, lastError: nil)
        case .reauthorizing:
            // Fetch a new token (or look at the token file again) and send once more.
            logger.notice(
                "upstream answered 401: the access token was refused; sending once more after getting a token again",
                metadata: ["request": "\(dispatch.job)"])
            tokens.rejected(token)
            requeue(members, lastError: nil)
        case .throttled(let until):
            logger.warning(
                "upstream answered 429: pausing this API",
                metadata: ["request": "\(dispatch.job)", "api": "\(dispatch.api)", "pausedUntil": "\(JSON.timestamp(until))"])
            timelines[dispatch.api, default: AttemptTimeline()].recordThrottled(at: time - took)
            // The pause must survive a restart: it is written as soon as the writer is free.
            pending.append(.pause(dispatch.api, until: until))
            pending.urgent = true
            shareThrottle(dispatch.api, for: until - time)
            requeue(members, lastError: nil)
        }
        requestPump()
    }

    func requeue(_ members: [RequestID], lastError: String?) {
        for member in members {
            guard var record = records[member] else { continue }
            record.state = .queued
            record.lastError = lastError
            if let job = scheduler.job(of: member) { record.attempts = job.attempts }
            records[member] = record
            pending.write(member)
        }
    }

    // MARK: Timer

    func setTimer(for deadline: Timestamp?) {
        if deadline == timerDeadline, timer != nil { return }
        timer?.cancel()
        timer = nil
        timerDeadline = deadline
        guard let deadline else { return }
        let delay = max(deadline - now(), .zero)
        timer = eventLoop.scheduleTask(in: .nanoseconds(delay.nanoseconds)) {
            self.assumeIsolated { $0.timerFired(deadline) }
        }
    }

    private func timerFired(_ deadline: Timestamp) {
        guard deadline == timerDeadline else { return }
        timer = nil
        timerDeadline = nil
        timerFiredFor = deadline
        requestPump()
    }

    /// Forgets finished records past their retention, at most once a minute.
    private func purgeIfDue(at time: Timestamp) {
        guard time - lastPurge >= .seconds(60) else { return }
        lastPurge = time
        let horizon = time - settings.retention
        let expired = records.values.filter { ($0.completedAt ?? time) < horizon }.map(\.id)
        for id in expired {
            records[id] = nil
            // Written as a deletion: the record is gone.
            pending.write(id)
        }
    }
}
