/// Who sent a request: the caller's uid from the socket's peer credentials, plus the optional
/// `Mdegate-Client` header, so several tools running as one user can still be told apart.
public struct ClientID: Hashable, Sendable, Codable, CustomStringConvertible {
    public var uid: UInt32
    public var name: String?

    public init(uid: UInt32, name: String? = nil) {
        self.uid = uid
        self.name = name
    }

    /// `uid 1000` or `uid 1000/soar`: how operators see the client in status output and logs.
    public var description: String {
        if let name { return "uid \(uid)/\(name)" }
        return "uid \(uid)"
    }
}

/// A request's id, as handed out in `Mdegate-Request-Id`. The core never makes ids itself.
public typealias RequestID = String

/// How failed attempts are retried. Throttling (429) is not the request's fault and is not
/// counted here; 5xx answers, timeouts and connection errors are.
public struct RetryPolicy: Sendable, Equatable {
    /// Attempts per request, the first one included, before the last answer becomes final.
    public var maxAttempts: Int
    public var initialBackoff: Duration
    public var maxBackoff: Duration

    public init(maxAttempts: Int, initialBackoff: Duration, maxBackoff: Duration) {
        self.maxAttempts = max(1, maxAttempts)
        self.initialBackoff = initialBackoff
        self.maxBackoff = maxBackoff
    }

    /// The pause before the attempt after `failures` failed ones: exponential, capped, and
    /// jittered ("equal jitter": half fixed, half random) so that many requests failing together
    /// do not come back together. `jitter` is a random number in `0..<1` supplied by the caller.
    public func backoff(afterFailures failures: Int, jitter: Double) -> Duration {
        let exponent = min(max(failures - 1, 0), 40)
        let uncapped = Double(initialBackoff.nanoseconds) * Double(1 << UInt64(min(exponent, 62)))
        let capped = min(uncapped, Double(maxBackoff.nanoseconds))
        let jittered = capped / 2 + capped / 2 * min(max(jitter, 0), 1)
        return .nanoseconds(Int64(jittered))
    }
}

/// What happened to one upstream attempt, as far as scheduling cares.
public enum AttemptOutcome: Sendable, Equatable {
    /// The upstream answered with this status; `retryAfter` is its `Retry-After`, if any.
    case answered(status: Int, retryAfter: Duration?)
    /// No answer: timeout, connection error, TLS failure.
    case unanswered
    /// The attempt never left: it could not be recorded durably. Its slot stays spent.
    case notSent
}
