import Foundation
import MDEGateCore
import MDEGateWire
import NIOCore

/// The request API: admission, waiting, reading and withdrawing, each in one turn of the loop.
extension Gateway {
    /// Admits a validated call and answers once it is stored (`.untilStored`) or final
    /// (`.untilFinal`). The request is queued at once, so its place counts for fairness and
    /// coalescing, but it cannot leave before its admission is committed: dispatches are only
    /// decided when a batch is cut, and a batch is cut only after the one before it committed
    /// (see `Gateway+Commit.swift`). If the commit fails, the request is taken back and the
    /// caller hears `.storeUnavailable`.
    public func submit(
        _ call: ActionCall, client: RequestRecord.Client, waiting: Waiting
    ) -> EventLoopFuture<Answer> {
        let id = UUID().uuidString.lowercased()
        let clientID = ClientID(uid: client.uid, name: client.name)
        let joined: RequestID?
        // A call that never coalesces is its own key.
        switch scheduler.submit(id, api: call.api, target: call.coalescingKey ?? id, client: clientID) {
        case .queueFull: return eventLoop.makeSucceededFuture(.queueFull)
        case .queued: joined = nil
        case .joined(let leader): joined = leader
        }
        let job = scheduler.job(of: id)
        records[id] = RequestRecord(
            id: id, call: call, client: client,
            state: job?.state == .sending ? .sending : .queued, attempts: job?.attempts ?? 0,
            joined: joined, createdAt: now(), completedAt: nil, response: nil, lastError: nil)
        logger.debug(
            "request admitted",
            metadata: [
                "request": "\(id)", "api": "\(call.api)", "target": "\(call.target)", "client": "\(clientID)",
                "joined": "\(joined ?? "-")",
            ])
        let promise = eventLoop.makePromise(of: Answer.self)
        pending.write(id)
        pending.followUp(.admission(id, waiting, promise))
        requestPump()
        return promise.futureResult
    }

    /// Called in the turn the admission committed: answers or registers the caller.
    func admitted(_ id: RequestID, waiting: Waiting, promise: EventLoopPromise<Answer>) {
        guard let record = records[id] else { return promise.succeed(.notFound) }
        if let metrics = metrics.api(record.call.api) {
            (waiting == .untilStored ? metrics.admittedAsync : metrics.admittedSync).increment()
            if record.joined != nil { metrics.coalesced.increment() }
        }
        switch waiting {
        // Always the record (a 202), even if the answer is back already: an attempt leaves as
        // soon as its commit returned, so a fast upstream can beat this turn.
        case .untilStored: promise.succeed(.accepted(document(for: record)))
        case .untilFinal(let timeout): promise.completeWith(wait(for: id, timeout: timeout))
        }
    }

    /// Answers once `id` is final, or once `timeout` passed with the record as it is then.
    public func wait(for id: RequestID, timeout: Duration?) -> EventLoopFuture<Answer> {
        guard let record = records[id] else { return eventLoop.makeSucceededFuture(.notFound) }
        if record.state.isFinal { return eventLoop.makeSucceededFuture(.final(record)) }
        var waiter = Waiter(id: nextWaiterID, promise: eventLoop.makePromise())
        nextWaiterID += 1
        if let timeout {
            let waiterID = waiter.id
            waiter.timeout = eventLoop.scheduleTask(in: .nanoseconds(timeout.nanoseconds)) {
                self.assumeIsolated { $0.expireWaiter(id, waiterID) }
            }
        }
        waiters[id, default: []].append(waiter)
        return waiter.promise.futureResult
    }

    /// Callers waiting for `id` to be final, for tests.
    func waiterCount(for id: RequestID) -> Int {
        waiters[id]?.count ?? 0
    }

    private func expireWaiter(_ id: RequestID, _ waiterID: Int) {
        guard let index = waiters[id]?.firstIndex(where: { $0.id == waiterID }) else { return }
        let waiter = waiters[id]!.remove(at: index)
        if waiters[id]!.isEmpty { waiters[id] = nil }
        waiter.promise.succeed(records[id].map { answer(for: $0) } ?? .notFound)
    }

    /// Answers everyone waiting for `id`, now that it is final (or gone).
    func resumeWaiters(of id: RequestID) {
        guard let waiting = waiters.removeValue(forKey: id) else { return }
        let answer: Answer = records[id].map { .final($0) } ?? .notFound
        for waiter in waiting {
            waiter.timeout?.cancel()
            waiter.promise.succeed(answer)
        }
    }

    /// `.final` for a final record, `.accepted` with its place in line otherwise.
    private func answer(for record: RequestRecord) -> Answer {
        record.state.isFinal ? .final(record) : .accepted(document(for: record))
    }

    /// The record as clients see it, with its place in line if queued.
    public func document(_ id: RequestID) -> RequestRecordDocument? {
        records[id].map { document(for: $0) }
    }

    func document(for record: RequestRecord) -> RequestRecordDocument {
        let place = record.state == .queued ? scheduler.position(of: record.id, at: now()) : nil
        return RequestRecordDocument(
            record: record, position: place?.position, estimatedDispatchAt: place?.estimatedDispatchAt)
    }

    /// Withdraws a request that has not been sent. Its waiters are answered at once; the caller
    /// hears once the withdrawal is stored (or that it could not be, and is written again).
    public func withdraw(_ id: RequestID) -> EventLoopFuture<Withdrawal> {
        guard var record = records[id] else { return eventLoop.makeSucceededFuture(.notFound) }
        if record.state != .withdrawn {
            switch scheduler.withdraw(id) {
            case .notPending, .alreadySent:
                return eventLoop.makeSucceededFuture(.alreadySent(document(for: record)))
            case .withdrawn:
                record.state = .withdrawn
                record.completedAt = now()
                records[id] = record
                metrics.api(record.call.api)?.withdrawn.increment()
                resumeWaiters(of: id)
                logger.info("request withdrawn", metadata: ["request": "\(id)"])
            }
        }
        // Answered once stored, also when asked again: the first withdrawal's commit may still
        // be running, or may have failed and wait to be written again.
        let promise = eventLoop.makePromise(of: Withdrawal.self)
        pending.write(id)
        pending.followUp(.withdrawal(id, promise))
        requestPump()
        return promise.futureResult
    }

    // MARK: Status

    /// From running counts and the ledger: no scan of the requests, so it stays cheap with
    /// 100,000 queued (the systemd heartbeat asks every 2 s).
    public func status() -> StatusDocument {
        let time = now()
        let apis = Route.apis.map { api in
            StatusDocument.APIState(
                name: api.name, limits: limitStates(api, at: time),
                pausedUntil: scheduler.pausedUntil(api).flatMap { $0 > time ? JSON.timestamp($0) : nil },
                queued: scheduler.queuedJobs(api),
                lastHour: (timelines[api] ?? AttemptTimeline()).document(at: time))
        }
        // The top-level fields are cancel's, as they were before there were several APIs.
        let cancel = apis.first { $0.name == UpstreamAPI.cancel.name }
        return StatusDocument(
            limits: cancel?.limits ?? [],
            guardMs: Int(settings.guardBand.nanoseconds / 1_000_000),
            queue: .init(
                depth: scheduler.queuedRequests,
                clients: scheduler.depthByClient().map { .init(client: $0.client.description, depth: $0.depth) }),
            pausedUntil: cancel?.pausedUntil,
            inFlight: scheduler.inFlight,
            apis: apis,
            upstream: .init(baseUrl: upstream.baseURL, lastStatus: lastUpstreamStatus, lastError: lastUpstreamError),
            auth: .init(mode: tokens.mode, tokenExpiresAt: tokens.tokenExpiresAt.map(JSON.timestamp), lastError: tokens.lastError),
            sharedQuota: sharedQuotaStatus(usage: nil))
    }

    private func limitStates(_ api: UpstreamAPI, at time: Timestamp) -> [StatusDocument.LimitState] {
        let ledger = scheduler.ledger(api)
        return ledger.limits.map { limit in
            StatusDocument.LimitState(
                spec: limit.spec, calls: limit.calls, windowSeconds: limit.window.seconds,
                used: ledger.used(limit, at: time),
                nextFreeAt: ledger.nextFree(limit, at: time).map(JSON.timestamp))
        }
    }
}

extension AttemptTimeline {
    /// The last hour up to `time`, as status shows it.
    func document(at time: Timestamp) -> StatusDocument.Timeline {
        let hour = lastHour(at: time)
        return StatusDocument.Timeline(start: JSON.timestamp(hour.start), attempts: hour.attempts, throttled: hour.throttled)
    }
}
