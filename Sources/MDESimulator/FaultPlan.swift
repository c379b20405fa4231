import NIOCore

/// The faults the simulator injects into API answers and token answers, so a client can rehearse
/// a bad day offline.
///
/// The API faults (the rates, `delay`, `failFirst`, the 429s) apply to the APIs named in `apis`,
/// or to every API when it is nil; the token faults to the token endpoint.
///
/// Set at start-up from the command line and changed at run time through `POST /_sim/faults`.
/// Injected faults are not limit violations: they model an upstream that misbehaves on its own.
struct FaultPlan: Sendable, Equatable {
    /// The APIs (`cancel`, `isolate`, ...) the API faults apply to; nil: every API.
    var apis: Set<String>?

    var fail500Rate = 0.0
    var fail503Rate = 0.0
    var dropRate = 0.0
    /// Held before every answer of the APIs the faults apply to, faults and violations included.
    var delay: TimeAmount = .zero
    /// The first `failFirst` attempts of each API for each id (machine action id or machine id;
    /// for the listing, the first `failFirst` listings) get 503.
    var failFirst = 0
    /// The next `next429Count` API requests get 429 with `Retry-After: next429RetryAfter`.
    var next429Count = 0
    var next429RetryAfter = 1
    /// The next `next429RetryAfterDateCount` API requests get 429 with `Retry-After` as an
    /// HTTP-date (RFC 9110 allows either form) at least `next429RetryAfterDateSeconds` from now.
    var next429RetryAfterDateCount = 0
    var next429RetryAfterDateSeconds = 1
    /// The next `next429WithoutRetryAfter` API requests get 429 without a Retry-After header,
    /// which the upstream is not documented to do, but which a careful client must survive.
    var next429WithoutRetryAfter = 0

    /// A login outage: every token request fails this way until it is set back to `.none`.
    var tokenOutage = TokenOutage.none
    /// Held before every token answer (outages included), so concurrent token requests overlap
    /// and a test can see whether a client fetches one token at a time.
    var tokenDelay: TimeAmount = .zero

    /// How the token endpoint fails during a login outage; raw values are the `/_sim/faults` spelling.
    enum TokenOutage: String, Sendable, Equatable, CaseIterable {
        case none
        /// 503 with the identity platform's error body.
        case serviceUnavailable = "503"
        /// Read the request, then close the connection without answering.
        case drop
    }

    /// A 429's `Retry-After`, in either of the forms RFC 9110 allows.
    enum RetryAfter: Sendable, Equatable {
        case seconds(Int)
        /// An IMF-fixdate this many seconds (rounded up to a whole second) after the answer.
        case date(secondsFromNow: Int)
    }

    enum Fault: Sendable, Equatable {
        case tooManyRequests(retryAfter: RetryAfter?)
        case internalServerError
        case serviceUnavailable
        /// Read the request, then close the connection without answering.
        case drop
    }

    /// Whether the API faults apply to `api`.
    func applies(to api: String) -> Bool {
        self.apis?.contains(api) ?? true
    }

    /// The delay for an answer of `api`.
    func delay(for api: String) -> TimeAmount {
        self.applies(to: api) ? self.delay : .zero
    }

    /// The fault for one request of an API the faults apply to (`applies(to:)`), that passed the
    /// limit, token and input checks, consuming one-shot faults.
    ///
    /// `attempt` is the how-many-th arrival this is of its API for its id (1 for the first).
    /// One random number is drawn per call, so a seeded run replays exactly.
    mutating func fault(attempt: Int, random: inout some RandomNumberGenerator) -> Fault? {
        let draw = Double.random(in: 0..<1, using: &random)
        if self.next429Count > 0 {
            self.next429Count -= 1
            return .tooManyRequests(retryAfter: .seconds(self.next429RetryAfter))
        }
        if self.next429RetryAfterDateCount > 0 {
            self.next429RetryAfterDateCount -= 1
            return .tooManyRequests(retryAfter: .date(secondsFromNow: self.next429RetryAfterDateSeconds))
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
        if self.tokenDelay < .zero { return "tokenDelayMs must not be negative" }
        if self.failFirst < 0 { return "failFirst must not be negative" }
        if self.next429Count < 0 || self.next429WithoutRetryAfter < 0 || self.next429RetryAfterDateCount < 0 {
            return "429 counts must not be negative"
        }
        if self.next429RetryAfter < 0 { return "next429.retryAfter must not be negative" }
        if self.next429RetryAfterDateSeconds < 0 { return "next429RetryAfterDate.retryAfter must not be negative" }
        if let apis = self.apis {
            if apis.isEmpty { return "apis must name at least one API (or be null for every API)" }
            if let unknown = apis.sorted().first(where: { SimulatedAPI.named($0) == nil }) {
                return "apis: " + SimulatedAPI.unknownNameMessage(unknown)
            }
        }
        return nil
    }
}

extension FaultPlan {
    /// The JSON form used by `/_sim/faults`, both for the answer and (every field optional) for updates.
    ///
    /// `apis` is written as `null` when the faults apply to every API; in an update, an absent
    /// `apis` changes nothing, `null` means every API, and a list names the APIs.
    struct Settings: Codable, Sendable {
        struct Next429: Codable, Sendable {
            var count: Int
            var retryAfter: Int?
        }

        /// Which APIs the API faults apply to.
        enum Scope: Sendable, Equatable {
            case every
            case only([String])
        }

        var apis: Scope?
        var fail500Rate: Double?
        var fail503Rate: Double?
        var dropRate: Double?
        var delayMs: Double?
        var failFirst: Int?
        var next429: Next429?
        var next429RetryAfterDate: Next429?
        var next429WithoutRetryAfter: Int?
        /// "none", "503" or "drop".
        var tokenOutage: String?
        var tokenDelayMs: Double?

        private enum CodingKeys: String, CodingKey, CaseIterable {
            case apis, fail500Rate, fail503Rate, dropRate, delayMs, failFirst, next429
            case next429RetryAfterDate, next429WithoutRetryAfter, tokenOutage, tokenDelayMs
        }

        static let fieldNames: Set<String> = Set(CodingKeys.allCases.map(\.rawValue))

        init(
            apis: Scope? = nil, fail500Rate: Double? = nil, fail503Rate: Double? = nil, dropRate: Double? = nil,
            delayMs: Double? = nil, failFirst: Int? = nil, next429: Next429? = nil, next429RetryAfterDate: Next429? = nil,
            next429WithoutRetryAfter: Int? = nil, tokenOutage: String? = nil, tokenDelayMs: Double? = nil
        ) {
            self.apis = apis
            self.fail500Rate = fail500Rate
            self.fail503Rate = fail503Rate
            self.dropRate = dropRate
            self.delayMs = delayMs
            self.failFirst = failFirst
            self.next429 = next429
            self.next429RetryAfterDate = next429RetryAfterDate
            self.next429WithoutRetryAfter = next429WithoutRetryAfter
            self.tokenOutage = tokenOutage
            self.tokenDelayMs = tokenDelayMs
        }

        init(from decoder: any Decoder) throws {
            let container = try decoder.container(keyedBy: CodingKeys.self)
            if container.contains(.apis) {
                self.apis = try container.decodeNil(forKey: .apis) ? .every : .only(container.decode([String].self, forKey: .apis))
            }
            self.fail500Rate = try container.decodeIfPresent(Double.self, forKey: .fail500Rate)
            self.fail503Rate = try container.decodeIfPresent(Double.self, forKey: .fail503Rate)
            self.dropRate = try container.decodeIfPresent(Double.self, forKey: .dropRate)
            self.delayMs = try container.decodeIfPresent(Double.self, forKey: .delayMs)
            self.failFirst = try container.decodeIfPresent(Int.self, forKey: .failFirst)
            self.next429 = try container.decodeIfPresent(Next429.self, forKey: .next429)
            self.next429RetryAfterDate = try container.decodeIfPresent(Next429.self, forKey: .next429RetryAfterDate)
            self.next429WithoutRetryAfter = try container.decodeIfPresent(Int.self, forKey: .next429WithoutRetryAfter)
            self.tokenOutage = try container.decodeIfPresent(String.self, forKey: .tokenOutage)
            self.tokenDelayMs = try container.decodeIfPresent(Double.self, forKey: .tokenDelayMs)
        }

        func encode(to encoder: any Encoder) throws {
            var container = encoder.container(keyedBy: CodingKeys.self)
            switch self.apis {
            case .every: try container.encodeNil(forKey: .apis)
            case .only(let names): try container.encode(names, forKey: .apis)
            case nil: break
            }
            try container.encodeIfPresent(self.fail500Rate, forKey: .fail500Rate)
            try container.encodeIfPresent(self.fail503Rate, forKey: .fail503Rate)
            try container.encodeIfPresent(self.dropRate, forKey: .dropRate)
            try container.encodeIfPresent(self.delayMs, forKey: .delayMs)
            try container.encodeIfPresent(self.failFirst, forKey: .failFirst)
            try container.encodeIfPresent(self.next429, forKey: .next429)
            try container.encodeIfPresent(self.next429RetryAfterDate, forKey: .next429RetryAfterDate)
            try container.encodeIfPresent(self.next429WithoutRetryAfter, forKey: .next429WithoutRetryAfter)
            try container.encodeIfPresent(self.tokenOutage, forKey: .tokenOutage)
            try container.encodeIfPresent(self.tokenDelayMs, forKey: .tokenDelayMs)
        }
    }

    var settings: Settings {
        Settings(
            apis: self.apis.map { .only($0.sorted()) } ?? .every,
            fail500Rate: self.fail500Rate,
            fail503Rate: self.fail503Rate,
            dropRate: self.dropRate,
            delayMs: Double(self.delay.nanoseconds) / 1e6,
            failFirst: self.failFirst,
            next429: .init(count: self.next429Count, retryAfter: self.next429RetryAfter),
            next429RetryAfterDate: .init(count: self.next429RetryAfterDateCount, retryAfter: self.next429RetryAfterDateSeconds),
            next429WithoutRetryAfter: self.next429WithoutRetryAfter,
            tokenOutage: self.tokenOutage.rawValue,
            tokenDelayMs: Double(self.tokenDelay.nanoseconds) / 1e6
        )
    }

    /// This plan with the fields present in `update` replaced; `next429` and
    /// `next429RetryAfterDate` without a `retryAfter` use `defaultRetryAfter` (the `--retry-after`
    /// value). Throws for a `tokenOutage` it does not know.
    func updated(with update: Settings, defaultRetryAfter: Int) throws(BodyError) -> FaultPlan {
        var plan = self
        switch update.apis {
        case .every: plan.apis = nil
        case .only(let names): plan.apis = Set(names)
        case nil: break
        }
        if let rate = update.fail500Rate { plan.fail500Rate = rate }
        if let rate = update.fail503Rate { plan.fail503Rate = rate }
        if let rate = update.dropRate { plan.dropRate = rate }
        if let delayMs = update.delayMs { plan.delay = try Self.amount(milliseconds: delayMs, field: "delayMs") }
        if let failFirst = update.failFirst { plan.failFirst = failFirst }
        if let next429 = update.next429 {
            plan.next429Count = next429.count
            plan.next429RetryAfter = next429.retryAfter ?? defaultRetryAfter
        }
        if let next429 = update.next429RetryAfterDate {
            plan.next429RetryAfterDateCount = next429.count
            plan.next429RetryAfterDateSeconds = next429.retryAfter ?? defaultRetryAfter
        }
        if let count = update.next429WithoutRetryAfter { plan.next429WithoutRetryAfter = count }
        if let outage = update.tokenOutage {
            guard let parsed = TokenOutage(rawValue: outage) else {
                let known = TokenOutage.allCases.map { "\"\($0.rawValue)\"" }.joined(separator: ", ")
                throw BodyError("tokenOutage must be one of \(known), got \"\(outage)\".")
            }
            plan.tokenOutage = parsed
        }
        if let delayMs = update.tokenDelayMs { plan.tokenDelay = try Self.amount(milliseconds: delayMs, field: "tokenDelayMs") }
        return plan
    }

    /// A delay from its JSON form; at most a day, so the conversion to nanoseconds cannot overflow.
    private static func amount(milliseconds: Double, field: String) throws(BodyError) -> TimeAmount {
        guard milliseconds.isFinite, milliseconds <= 86_400_000 else {
            throw BodyError("\(field) must be a number of milliseconds up to 86400000 (a day), got \(milliseconds).")
        }
        return .nanoseconds(Int64((milliseconds * 1e6).rounded()))
    }
}
