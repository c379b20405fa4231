import NIOCore

/// The faults the simulator injects into cancel answers, so a client can rehearse a bad day offline.
///
/// Set at start-up from the command line and changed at run time through `POST /_sim/faults`.
/// Injected faults are not limit violations: they model an upstream that misbehaves on its own.
struct FaultPlan: Sendable, Equatable {
    var fail500Rate = 0.0
    var fail503Rate = 0.0
    var dropRate = 0.0
    /// Applied to every answer of the MDE API routes, faults included.
    var delay: TimeAmount = .zero
    /// The first `failFirst` attempts for each machine action id get 503.
    var failFirst = 0
    /// The next `next429Count` cancel requests get 429 with `Retry-After: next429RetryAfter`.
    var next429Count = 0
    var next429RetryAfter = 1
    /// The next `next429WithoutRetryAfter` cancel requests get 429 without a Retry-After header,
    /// which the upstream is not documented to do, but which a careful client must survive.
    var next429WithoutRetryAfter = 0

    enum Fault: Sendable, Equatable {
        case tooManyRequests(retryAfter: Int?)
        case internalServerError
        case serviceUnavailable
        /// Read the request, then close the connection without answering.
        case drop
    }

    /// The fault for one cancel request that passed the limit check, consuming one-shot faults.
    ///
    /// `attempt` is the how-many-th arrival this is for its machine action id (1 for the first).
    /// One random number is drawn per call, so a seeded run replays exactly.
    mutating func fault(attempt: Int, random: inout some RandomNumberGenerator) -> Fault? {
        let draw = Double.random(in: 0..<1, using: &random)
        if self.next429Count > 0 {
            self.next429Count -= 1
            return .tooManyRequests(retryAfter: self.next429RetryAfter)
        }
        if self.next429WithoutRetryAfter > 0 {
            self.next429WithoutRetryAfter -= 1
            return .tooManyRequests(retryAfter: nil)
        }
        if attempt <= self.failFirst { return .serviceUnavailable }
        // One draw against the stacked rates keeps each rate exact (their sum is at most 1).
        if draw < self.fail500Rate { return .internalServerError }
        if draw < self.fail500Rate + self.fail503Rate { return .serviceUnavailable }
        if draw < self.fail500Rate + self.fail503Rate + self.dropRate { return .drop }
        return nil
    }

    /// Why a plan is not usable, in words for the person who wrote it.
    func validationError() -> String? {
        for (name, rate) in [("fail500Rate", self.fail500Rate), ("fail503Rate", self.fail503Rate), ("dropRate", self.dropRate)]
        where !(0...1).contains(rate) {
            return "\(name) must be between 0 and 1, got \(rate)"
        }
        if self.fail500Rate + self.fail503Rate + self.dropRate > 1 {
            return "fail500Rate + fail503Rate + dropRate must be at most 1"
        }
        if self.delay < .zero { return "delayMs must not be negative" }
        if self.failFirst < 0 { return "failFirst must not be negative" }
        if self.next429Count < 0 || self.next429WithoutRetryAfter < 0 { return "429 counts must not be negative" }
        if self.next429RetryAfter < 0 { return "next429.retryAfter must not be negative" }
        return nil
    }
}

extension FaultPlan {
    /// The JSON form used by `/_sim/faults`, both for the answer and (every field optional) for updates.
    struct Settings: Codable, Sendable {
        struct Next429: Codable, Sendable {
            var count: Int
            var retryAfter: Int?
        }

        var fail500Rate: Double?
        var fail503Rate: Double?
        var dropRate: Double?
        var delayMs: Double?
        var failFirst: Int?
        var next429: Next429?
        var next429WithoutRetryAfter: Int?

        static let fieldNames: Set<String> = [
            "fail500Rate", "fail503Rate", "dropRate", "delayMs", "failFirst", "next429",
            "next429WithoutRetryAfter",
        ]
    }

    var settings: Settings {
        Settings(
            fail500Rate: self.fail500Rate,
            fail503Rate: self.fail503Rate,
            dropRate: self.dropRate,
            delayMs: Double(self.delay.nanoseconds) / 1e6,
            failFirst: self.failFirst,
            next429: .init(count: self.next429Count, retryAfter: self.next429RetryAfter),
            next429WithoutRetryAfter: self.next429WithoutRetryAfter
        )
    }

    /// This plan with the fields present in `update` replaced; `next429` without a `retryAfter`
    /// uses `defaultRetryAfter` (the `--retry-after` value).
    func updated(with update: Settings, defaultRetryAfter: Int) -> FaultPlan {
        var plan = self
        if let rate = update.fail500Rate { plan.fail500Rate = rate }
        if let rate = update.fail503Rate { plan.fail503Rate = rate }
        if let rate = update.dropRate { plan.dropRate = rate }
        if let delayMs = update.delayMs, delayMs.isFinite {
            plan.delay = .nanoseconds(Int64((delayMs * 1e6).rounded()))
        }
        if let failFirst = update.failFirst { plan.failFirst = failFirst }
        if let next429 = update.next429 {
            plan.next429Count = next429.count
            plan.next429RetryAfter = next429.retryAfter ?? defaultRetryAfter
        }
        if let count = update.next429WithoutRetryAfter { plan.next429WithoutRetryAfter = count }
        return plan
    }
}
