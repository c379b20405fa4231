import MDEGateCore

/// What a scrape of `/metrics` reads from the gateway: the states behind the gauges, taken in
/// one turn of the loop, so a scrape sees one consistent instant and the request path pays
/// nothing for them (see `GatewayMetrics`).
extension Gateway {
    /// The metrics in Prometheus's text format, with every state read now.
    func metricsExposition() -> [UInt8] {
        metrics.update(metricsSnapshot(at: now()))
        return metrics.exposition()
    }

    func metricsSnapshot(at time: Timestamp) -> GatewayMetrics.Snapshot {
        var limits: [GatewayMetrics.Snapshot.LimitUse] = []
        var apis: [GatewayMetrics.Snapshot.APIState] = []
        for api in Route.apis {
            let ledger = scheduler.ledger(api)
            for limit in ledger.limits {
                limits.append(.init(api: api, spec: limit.spec, calls: limit.calls, used: ledger.used(limit, at: time)))
            }
            let ends = scheduler.queueEnds(api)
            let oldest = ends.first.compactMap { admission(ofJob: $0) }.min()
            let lastSlot = ends.last.compactMap { scheduler.position(of: $0, at: time)?.estimatedDispatchAt }.max()
            let queued = scheduler.queuedJobs(api)
            // Overdue: work waits although the quota and the pause have allowed a call since the
            // later of the oldest admission and the last departure. The quota explains none of
            // that wait; something else holds the queue (no token, a store that cannot be
            // written, every attempt slot taken by slow calls).
            var overdue = Duration.zero
            if queued > 0, let oldest {
                var since = max(oldest, lastDeparture[api] ?? oldest)
                if let paused = scheduler.pausedUntil(api) { since = max(since, paused) }
                overdue = max(time - ledger.earliestSlot(notBefore: since), .zero)
            }
            apis.append(
                .init(
                    api: api, paused: scheduler.pausedUntil(api).map { $0 > time } ?? false,
                    queued: queued,
                    oldestQueued: oldest.map { max(time - $0, .zero) } ?? .zero,
                    expectedWait: lastSlot.map { max($0 - time, .zero) } ?? .zero,
                    overdue: overdue))
        }
        return GatewayMetrics.Snapshot(
            limits: limits, apis: apis, queueDepth: scheduler.queuedRequests,
            clients: scheduler.depthByClient().map { ($0.client.description, $0.depth) },
            inFlight: scheduler.inFlight, tokenExpiresAt: tokens.tokenExpiresAt,
            sharedQuotaUp: sharedQuota == nil ? nil : sharedHealth.reachable)
    }

    /// When the longest waiting request of job `id` was admitted.
    private func admission(ofJob id: RequestID) -> Timestamp? {
        scheduler.job(id: id)?.members.compactMap { records[$0]?.createdAt }.min()
    }
}
