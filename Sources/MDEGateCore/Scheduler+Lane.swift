import DequeModule

extension Scheduler {
    /// What makes two requests one upstream call: the same API about the same target. The target
    /// is compared case-insensitively (GUIDs and hex ids are), and stored lowercased, sharing the
    /// id's own storage when it is lowercase already (as most tools send it), so 100,000 queued
    /// jobs hold no second copy.
    struct TargetKey: Hashable, Sendable {
        let api: UpstreamAPI
        let target: String

        init(api: UpstreamAPI, target: String) {
            self.api = api
            let lowered = target.lowercased()
            self.target = lowered == target ? target : lowered
        }
    }

    /// One upstream API's share of the scheduler: its quota, its 429 pause, and its clients'
    /// queues in round-robin order. Jobs themselves live in the scheduler; a lane holds their ids.
    struct Lane: Sendable {
        let api: UpstreamAPI
        var ledger: any QuotaLedger
        /// No attempt of this lane starts before this instant.
        var pausedUntil: Timestamp?
        var queues: [ClientID: Deque<RequestID>] = [:]
        /// Clients with queued jobs, in round-robin order: the first is served next.
        var rotation: Deque<ClientID> = []
        /// Jobs waiting out a retry backoff: their client and when each is due.
        var backingOff: [RequestID: (client: ClientID, until: Timestamp)] = [:]
        /// The next slots as projected from `start` (see `projection(notBefore:)`); dropped
        /// whenever the ledger changes.
        private var projectionCache: (start: Timestamp, slots: [Timestamp])?

        init(api: UpstreamAPI, ledger: any QuotaLedger) {
            self.api = api
            self.ledger = ledger
        }

        var queuedJobs: Int { queues.values.reduce(0) { $0 + $1.count } }

        // MARK: Queues

        mutating func enqueue(_ jobID: RequestID, of client: ClientID, atHead: Bool) {
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

        mutating func dequeue(_ jobID: RequestID, of client: ClientID) {
            queues[client]?.removeAll { $0 == jobID }
            if queues[client]?.isEmpty == true {
                queues[client] = nil
                rotation.removeAll { $0 == client }
            }
        }

        /// Moves jobs whose backoff is over to the head of their clients' queues, and names them.
        mutating func dueRetries(at now: Timestamp) -> [RequestID] {
            guard !backingOff.isEmpty else { return [] }
            let due = backingOff.filter { $0.value.until <= now }
                .sorted { ($0.value.until, $0.key) < ($1.value.until, $1.key) }
            for (jobID, waiting) in due.reversed() {
                backingOff[jobID] = nil
                enqueue(jobID, of: waiting.client, atHead: true)
            }
            return due.map(\.key)
        }

        // MARK: Quota

        /// The job to send now, if this lane is not paused, has work and its ledger records an
        /// attempt at `now`; the job leaves its queue. The client goes to the back of the rotation.
        mutating func takeNext(at now: Timestamp) -> RequestID? {
            if let pausedUntil, now < pausedUntil { return nil }
            guard let client = rotation.first, ledger.recordIfAllowed(at: now) else { return nil }
            projectionCache = nil
            let jobID = queues[client]!.removeFirst()
            rotation.removeFirst()
            if queues[client]!.isEmpty {
                queues[client] = nil
            } else {
                rotation.append(client)  // a client with more work waits for everyone else's turn
            }
            return jobID
        }

        /// When `takeNext` may next return a job, if nothing else happens first.
        func nextWakeup(after now: Timestamp) -> Timestamp? {
            let readyAt = rotation.isEmpty ? backingOff.values.map(\.until).min() : now
            guard let readyAt else { return nil }
            var wakeup = ledger.earliestSlot(notBefore: max(now, readyAt))
            // A ledger that waits for an answer from elsewhere (`SharedLedger`) is woken by it.
            guard wakeup != .distantFuture else { return nil }
            if let pausedUntil { wakeup = max(wakeup, pausedUntil) }
            return wakeup
        }

        /// Jobs that could start now if the ledger allowed: queued, not paused, capped by
        /// `capacity` (the attempts the concurrency cap leaves).
        func startable(at now: Timestamp, capacity: Int) -> Int {
            if let pausedUntil, now < pausedUntil { return 0 }
            let due = backingOff.values.reduce(0) { $0 + ($1.until <= now ? 1 : 0) }
            return min(capacity, queuedJobs + due)
        }

        /// Changes the ledger, if it is an `L`, and drops what was projected from it.
        mutating func updateLedger<L: QuotaLedger>(as type: L.Type, _ body: (inout L) -> Void) {
            guard var typed = ledger as? L else { return }
            body(&typed)
            ledger = typed
            projectionCache = nil
        }

        mutating func restamp(_ recorded: Timestamp, to departed: Timestamp) {
            ledger.restamp(recorded, to: departed)
            projectionCache = nil
        }

        mutating func reconfigure(limits: [Limit], guardBand: Duration, earlier: [Timestamp]) {
            ledger.reconfigure(limits: limits, guardBand: guardBand, earlier: earlier)
            projectionCache = nil
        }

        mutating func pause(until: Timestamp) {
            pausedUntil = max(pausedUntil ?? until, until)
        }

        // MARK: Estimates

        /// A queued job's 1-based place in this lane's order of dispatch, and when its slot opens.
        mutating func position(of jobID: RequestID, client: ClientID, at now: Timestamp) -> (
            position: Int, estimatedDispatchAt: Timestamp
        )? {
            guard let queue = queues[client], let turn = rotation.firstIndex(of: client) else { return nil }
            // Search from the back: a request just admitted (the common question) is at or near the end.
            guard let index = queue.lastIndex(of: jobID) else { return nil }
            // Jobs sent before it: its own client's earlier ones, and from every other client as many
            // as rounds pass (one more from the clients ahead of it in this round).
            var ahead = index
            for (place, other) in rotation.enumerated() where other != client {
                ahead += min(queues[other]!.count, place < turn ? index + 1 : index)
            }
            let start = max(now, pausedUntil ?? now)
            return (ahead + 1, estimatedSlot(ahead, notBefore: start))
        }

        /// The instant of the `index`-th next slot (0-based), from the cached projection; beyond
        /// it, at the pace of the tightest limit, so a request deep in a long queue is cheap.
        private mutating func estimatedSlot(_ index: Int, notBefore start: Timestamp) -> Timestamp {
            let projected = projection(notBefore: start)
            let remaining = index - (projected.count - 1)
            guard remaining > 0 else { return projected[index] }
            let paces = ledger.limits.map { Double(($0.window + ledger.guardBand).nanoseconds) / Double($0.calls) }
            let pace = paces.max() ?? 0
            return projected.last! + .nanoseconds(Int64(pace * Double(remaining)))
        }

        /// The next `Scheduler.exactSlots` slots from `start`. A projection made from an earlier
        /// start holds as long as the ledger did not change and `start` is not past its first
        /// slot: no instant between that start and the first slot is allowed, so both starts lead
        /// to the same slots.
        private mutating func projection(notBefore start: Timestamp) -> [Timestamp] {
            if let cached = projectionCache, cached.start <= start, start <= cached.slots[0] {
                return cached.slots
            }
            let slots = ledger.projectedSlots(count: Scheduler.exactSlots, notBefore: start)
            projectionCache = (start, slots)
            return slots
        }
    }
}
