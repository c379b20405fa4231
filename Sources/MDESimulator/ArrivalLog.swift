import MDEGateCore
import NIOCore

/// The strict upstream's memory of when one API's calls arrived, and the judge of violations.
/// The simulator keeps one per API (MDE limits each API separately), each with its own limits.
///
/// The real API counts every call against the application's quota, including calls it refuses, so
/// this log records every arrival, also those answered 429 or 5xx. An arrival at time t violates a
/// limit N/W when N or more earlier arrivals lie in (t - W, t]: a slot comes back exactly one window
/// after it was taken, the rule mdegate promises to keep. (A refilling token bucket would let up to
/// 2N calls into some window; this log catches that.)
///
/// Times are monotonic (`NIODeadline`): the simulator judges what it saw, immune to clock steps.
struct ArrivalLog: Sendable {
    let limits: [Limit]

    /// Arrival times in order; entries before `oldest` have left every window.
    private var arrivals: [NIODeadline] = []
    private var oldest = 0
    private let longestWindow: TimeAmount

    init(limits: [Limit]) {
        self.limits = limits
        self.longestWindow = .nanoseconds(limits.map(\.window.nanoseconds).max() ?? 0)
    }

    /// Records an arrival at `time` and returns the first limit it violates, if any.
    mutating func record(at time: NIODeadline) -> Limit? {
        guard !self.limits.isEmpty else { return nil }
        // Callers read the clock under one lock, so times arrive in order; clamp to stay sorted anyway.
        let time = max(time, self.arrivals.last ?? time)
        self.forget(upTo: time - self.longestWindow)
        let violated = self.limits.first { limit in
            self.countArrivals(after: time - .nanoseconds(limit.window.nanoseconds)) >= limit.calls
        }
        self.arrivals.append(time)
        return violated
    }

    /// Forgets every arrival; the limits stay.
    mutating func removeAll() {
        self.arrivals.removeAll(keepingCapacity: true)
        self.oldest = 0
    }

    /// The number of recorded arrivals later than `start`, by binary search.
    private func countArrivals(after start: NIODeadline) -> Int {
        var low = self.oldest
        var high = self.arrivals.count
        while low < high {
            let middle = (low + high) / 2
            if self.arrivals[middle] > start { high = middle } else { low = middle + 1 }
        }
        return self.arrivals.count - low
    }

    /// Drops arrivals at or before `cutoff`: they can no longer fall inside any window.
    private mutating func forget(upTo cutoff: NIODeadline) {
        while self.oldest < self.arrivals.count, self.arrivals[self.oldest] <= cutoff {
            self.oldest += 1
        }
        if self.oldest > 4096, self.oldest * 2 > self.arrivals.count {
            self.arrivals.removeFirst(self.oldest)
            self.oldest = 0
        }
    }
}
