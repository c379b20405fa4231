import MDEGateCore

/// Start-up: taking back what the store kept.
extension Gateway {
    /// Takes back the stored records, and rebuilds the jobs of requests that were queued or being
    /// sent, in their original order (the store returns records oldest first). A request that
    /// was being sent is queued again; its attempt already counts in the ledger.
    func restore(_ stored: [RequestRecord]) {
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
                    id: group.first.joined ?? group.first.id, api: group.first.call.api,
                    target: group.first.call.coalescingKey ?? (group.first.joined ?? group.first.id),
                    client: group.first.clientID, members: group.members, attempts: group.attempts,
                    // Failures are not stored apart from throttled attempts: count every attempt as
                    // one, which can only shorten the retries left, never add upstream calls.
                    failures: group.attempts)
            })
        if !groups.isEmpty { logger.notice("restored unfinished requests", metadata: ["jobs": "\(groups.count)"]) }
    }
}
