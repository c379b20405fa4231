import Foundation
import MDEGateCore
import NIOCore
import NIOHTTP1
import Synchronization

/// What the simulator is started with.
struct SimulatorConfiguration: Sendable {
    var token: String
    var tenant: String
    var clientId: String
    var clientSecret: String
    /// The app registration's certificates, for client assertions; empty: secrets only.
    var clientCertificates: [RegisteredCertificate]
    var tokenLifetime: TimeAmount
    var limits: [Limit]
    /// Sent as `Retry-After` with limit violations.
    var retryAfterSeconds: Int
    var faults: FaultPlan
    var seed: UInt64
    var quiet: Bool
    /// "https" when serving TLS: part of the token URL a client assertion's `aud` must name.
    var scheme: String
}

/// One parsed HTTP request, as the simulator sees it.
struct SimulatorRequest: Sendable {
    var method: HTTPMethod
    /// The path without the query string.
    var path: String
    var headers: HTTPHeaders
    var body: ByteBuffer?
}

/// What to do with a request, decided as soon as it has been read.
struct Decision: Sendable {
    enum Action: Sendable {
        case reply(Reply)
        /// Close the connection without answering.
        case drop
    }

    /// The requests whose answers are counted when they go out.
    enum Counted: Sendable {
        case none
        /// In `answered`, `dropped`, `inFlight` and `maxInFlight`.
        case cancel
        /// In `tokenEndpoint.inFlight` and `tokenEndpoint.maxInFlight`.
        case token
    }

    var action: Action
    /// How long to hold the answer (the `--delay` and `tokenDelayMs` faults), without blocking
    /// the event loop.
    var delay: TimeAmount = .zero
    var counted = Counted.none
}

/// The simulated MDE API: routing, the strict limits, injected faults, tokens and counters.
///
/// One instance serves every connection on every event loop, so all mutable state sits behind one
/// lock, taken once to decide a request and once to account for its answer.
final class Simulator: Sendable {
    private let configuration: SimulatorConfiguration
    private let factory: MachineActionFactory
    private let log: RequestLog?
    private let state: Mutex<State>

    private struct State: Sendable {
        var arrivals: ArrivalLog
        var faults: FaultPlan
        var tokens: TokenIssuer
        var random: SplitMix64
        var counters = Counters()
        var inFlight = 0
        var tokenRequestsInFlight = 0
    }

    /// The counters `GET /_sim/stats` reports and `POST /_sim/reset` zeroes.
    struct Counters: Encodable, Sendable {
        var arrivals = 0
        var violations = 0
        var answered: [String: Int] = [:]
        var arrivalsById: [String: Int] = [:]
        /// Every token request, whatever its answer; `tokenEndpoint` tells them apart.
        var tokenRequests = 0
        var tokenEndpoint = TokenCounters()
        var dropped = 0
        var maxInFlight = 0
        var inFlight = 0
        /// Wall-clock (CLOCK_REALTIME) nanoseconds since the epoch of each cancel arrival, in order,
        /// so a benchmark can compare them with the gateway's ledger; the first
        /// `maxRecordedArrivalTimes` after a reset only.
        var arrivalTimesNs: [Int64] = []
    }

    /// What the token endpoint did; `granted + refused + outages == tokenRequests`.
    struct TokenCounters: Encodable, Sendable {
        var granted = 0
        var grantedWithSecret = 0
        var grantedWithAssertion = 0
        var refused = 0
        /// Refusals by AADSTS number ("7000215", "700027", ...).
        var refusedByCode: [String: Int] = [:]
        /// Client assertions refused because their `jti` had been presented before.
        var replayedJtis = 0
        /// Requests answered by an injected login outage (`tokenOutage`), 503 or dropped.
        var outages = 0
        /// Token requests between arrival and answer; with `tokenDelayMs`, `maxInFlight` shows
        /// whether a client ever had more than one token request out at once.
        var inFlight = 0
        var maxInFlight = 0
    }

    /// Bounds the memory `Counters.arrivalTimesNs` may take (8 bytes each).
    static let maxRecordedArrivalTimes = 200_000

    /// The wall clock, which the gateway's ledger uses too (the limits are judged on `NIODeadline`).
    private static func wallClockNanoseconds() -> Int64 {
        var spec = timespec()
        clock_gettime(CLOCK_REALTIME, &spec)
        return Int64(spec.tv_sec) * 1_000_000_000 + Int64(spec.tv_nsec)
    }

    init(configuration: SimulatorConfiguration) {
        self.configuration = configuration
        self.factory = MachineActionFactory(cancellationRequestor: configuration.clientId)
        self.log = configuration.quiet ? nil : RequestLog()
        self.state = Mutex(
            State(
                arrivals: ArrivalLog(limits: configuration.limits),
                faults: configuration.faults,
                tokens: TokenIssuer(
                    tenant: configuration.tenant,
                    clientId: configuration.clientId,
                    clientSecret: configuration.clientSecret,
                    staticToken: configuration.token,
                    lifetime: configuration.tokenLifetime,
                    certificates: configuration.clientCertificates
                ),
                random: SplitMix64(seed: configuration.seed)
            )
        )
    }

    // MARK: Routing

    func decide(_ request: SimulatorRequest) -> Decision {
        let segments = request.path.split(separator: "/")
        let route = segments.map { $0.lowercased() }
        switch route.count {
        case 4 where route[0] == "api" && route[1] == "machineactions" && route[3] == "cancel":
            return self.only(.POST, request) { self.cancel(request, id: String(segments[2])) }
        case 4 where route[1] == "oauth2" && route[2] == "v2.0" && route[3] == "token":
            return self.only(.POST, request) { self.token(request, tenant: String(segments[0])) }
        case 2 where route[0] == "_sim" && route[1] == "stats":
            return self.only(.GET, request) { Decision(action: .reply(self.stats())) }
        case 2 where route[0] == "_sim" && route[1] == "faults":
            if request.method == .GET { return Decision(action: .reply(self.currentFaults())) }
            return self.only(.POST, request) { Decision(action: .reply(self.changeFaults(request))) }
        case 2 where route[0] == "_sim" && route[1] == "reset":
            return self.only(.POST, request) { Decision(action: .reply(self.reset())) }
        case 2 where route[0] == "_sim" && route[1] == "revoke-tokens":
            return self.only(.POST, request) { Decision(action: .reply(self.revokeTokens())) }
        default:
            return Decision(
                action: .reply(.upstreamError(.notFound, code: "ResourceNotFound", message: "No route for \(request.path).")))
        }
    }

    private func only(_ method: HTTPMethod, _ request: SimulatorRequest, _ handle: () -> Decision) -> Decision {
        guard request.method == method else {
            let reply = Reply.upstreamError(
                .methodNotAllowed, code: "MethodNotAllowed",
                message: "\(request.method.rawValue) is not supported on \(request.path).",
                headers: ["Allow": method.rawValue])
            return Decision(action: .reply(reply))
        }
        return handle()
    }

    // MARK: The MDE API

    /// The verdict on one cancel request, reached under the lock; the answer is built outside it.
    private enum Verdict {
        case violation(Limit)
        case unauthorized(String)
        case invalidId
        case invalidBody(String)
        case fault(FaultPlan.Fault)
        case notFound
        case cancelled(comment: String)
    }

    /// `POST /api/machineactions/{id}/cancel`. The order of checks is the strict upstream's: every
    /// arrival is logged and judged against the limits first (an unauthenticated or malformed call
    /// still counts), then the token, the id and the body, then injected faults, then the answer.
    private func cancel(_ request: SimulatorRequest, id: String) -> Decision {
        let key = id.lowercased()  // GUIDs compare case-insensitively
        let authorization = request.headers.first(name: "Authorization")
        let body = Result { () throws(BodyError) in try JSON.decode(CancelBody.self, from: request.body) }

        let (verdict, delay) = self.state.withLock { state -> (Verdict, TimeAmount) in
            let now = NIODeadline.now()
            state.counters.arrivals += 1
            if state.counters.arrivalTimesNs.count < Self.maxRecordedArrivalTimes {
                state.counters.arrivalTimesNs.append(Self.wallClockNanoseconds())
            }
            let attempt = state.counters.arrivalsById[key, default: 0] + 1
            state.counters.arrivalsById[key] = attempt
            state.inFlight += 1
            state.counters.maxInFlight = max(state.counters.maxInFlight, state.inFlight)
            let delay = state.faults.delay

            if let limit = state.arrivals.record(at: now) {
                state.counters.violations += 1
                return (.violation(limit), delay)
            }
            if let problem = state.tokens.rejection(ofAuthorization: authorization, now: now) {
                return (.unauthorized(problem), delay)
            }
            guard GUID.isValid(id) else { return (.invalidId, delay) }
            let comment: String
            switch body {
            case .success(let parsed): comment = parsed.Comment
            case .failure(let error): return (.invalidBody(error.message), delay)
            }
            if let fault = state.faults.fault(attempt: attempt, random: &state.random) {
                return (.fault(fault), delay)
            }
            return (id.hasPrefix("00000000") ? .notFound : .cancelled(comment: comment), delay)
        }

        let action: Decision.Action
        switch verdict {
        case .violation(let limit):
            let seconds = self.configuration.retryAfterSeconds
            action = .reply(.upstreamError(
                .tooManyRequests, code: "TooManyRequests",
                message: "Rate limit is exceeded. Try again in \(seconds) seconds.",
                headers: ["Retry-After": String(seconds), "X-Sim-Violated-Limit": limit.spec]))
        case .unauthorized(let problem):
            action = .reply(.upstreamError(
                .unauthorized, code: "Unauthorized", message: problem, headers: ["WWW-Authenticate": "Bearer"]))
        case .invalidId:
            action = .reply(.upstreamError(
                .badRequest, code: "BadRequest", message: "Machine action id '\(id)' is not a valid GUID."))
        case .invalidBody(let message):
            action = .reply(.upstreamError(.badRequest, code: "InvalidRequestBody", message: message))
        case .fault(.tooManyRequests(let retryAfter)):
            var headers = HTTPHeaders()
            var message = "Rate limit is exceeded."
            switch retryAfter {
            case .seconds(let seconds):
                headers.add(name: "Retry-After", value: String(seconds))
                message += " Try again in \(seconds) seconds."
            case .date(let seconds):
                // Rounded up: a client that waits until the date never retries early.
                let now = Timestamp.now().nanosecondsSinceEpoch
                let date = (now + 999_999_999) / 1_000_000_000 + Int64(seconds)
                headers.add(name: "Retry-After", value: HTTPDate.imfFixdate(secondsSinceEpoch: date))
                message += " Try again in \(seconds) seconds."
            case nil:
                break
            }
            action = .reply(.upstreamError(.tooManyRequests, code: "TooManyRequests", message: message, headers: headers))
        case .fault(.internalServerError):
            action = .reply(.upstreamError(
                .internalServerError, code: "InternalServerError", message: "An unexpected error occurred (injected)."))
        case .fault(.serviceUnavailable):
            action = .reply(.upstreamError(
                .serviceUnavailable, code: "ServiceUnavailable", message: "The service is temporarily unavailable (injected)."))
        case .fault(.drop):
            action = .drop
        case .notFound:
            action = .reply(.upstreamError(
                .notFound, code: "ResourceNotFound", message: "Machine action \(id) was not found"))
        case .cancelled(let comment):
            action = .reply(.json(.ok, self.factory.cancelledAction(id: id, comment: comment, at: .now())))
        }
        return Decision(action: action, delay: delay, counted: .cancel)
    }

    /// The cancel request's body; the property name is case-sensitive, as upstream.
    private struct CancelBody: Decodable {
        var Comment: String
    }

    // MARK: The identity platform

    /// `POST /{tenant}/oauth2/v2.0/token`. Token requests never count against the API's limits.
    ///
    /// A client assertion's `aud` must name the URL the request was sent to, as the client saw it:
    /// this server's scheme, the `Host` header and the path.
    private func token(_ request: SimulatorRequest, tenant: String) -> Decision {
        let form = Self.formFields(request.body)
        let audience = "\(self.configuration.scheme)://\(request.headers.first(name: "Host") ?? "")\(request.path)"
        let (outcome, delay) = self.state.withLock { state -> (TokenOutcome, TimeAmount) in
            state.counters.tokenRequests += 1
            state.tokenRequestsInFlight += 1
            state.counters.tokenEndpoint.maxInFlight = max(state.counters.tokenEndpoint.maxInFlight, state.tokenRequestsInFlight)
            let delay = state.faults.tokenDelay
            switch state.faults.tokenOutage {
            case .serviceUnavailable, .drop:
                state.counters.tokenEndpoint.outages += 1
                return (.outage(state.faults.tokenOutage), delay)
            case .none:
                break
            }
            let result = state.tokens.grant(
                tenant: tenant, form: form, audience: audience, now: .now(), wallClock: .now())
            switch result {
            case .success(let grant):
                state.counters.tokenEndpoint.granted += 1
                switch grant.credential {
                case .secret: state.counters.tokenEndpoint.grantedWithSecret += 1
                case .assertion: state.counters.tokenEndpoint.grantedWithAssertion += 1
                }
            case .failure(let refusal):
                state.counters.tokenEndpoint.refused += 1
                state.counters.tokenEndpoint.refusedByCode[String(refusal.code), default: 0] += 1
                if refusal.code == ClientAssertionCheck.replayCode { state.counters.tokenEndpoint.replayedJtis += 1 }
            }
            return (.answered(result), delay)
        }
        let action: Decision.Action
        switch outcome {
        case .answered(.success(let grant)):
            action = .reply(.json(.ok, grant, headers: ["Cache-Control": "no-store", "Pragma": "no-cache"]))
        case .answered(.failure(let refusal)):
            action = .reply(.json(refusal.status, refusal))
        case .outage(.drop):
            action = .drop
        case .outage:
            let refusal = TokenIssuer.Refusal(.serviceUnavailable, "temporarily_unavailable", code: 90033,
                "A transient error has occurred: the sign-in service is unavailable (injected outage). Please try again.")
            action = .reply(.json(refusal.status, refusal))
        }
        return Decision(action: action, delay: delay, counted: .token)
    }

    private enum TokenOutcome {
        case answered(Result<TokenIssuer.Grant, TokenIssuer.Refusal>)
        case outage(FaultPlan.TokenOutage)
    }

    /// Decodes `application/x-www-form-urlencoded` (`+` is a space, then percent-decoding).
    private static func formFields(_ body: ByteBuffer?) -> [String: String] {
        let text = body.map { String(buffer: $0) } ?? ""
        var fields: [String: String] = [:]
        for pair in text.split(separator: "&") {
            let parts = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            func decoded(_ part: Substring) -> String {
                let spaced = part.replacingOccurrences(of: "+", with: " ")
                return spaced.removingPercentEncoding ?? spaced
            }
            fields[decoded(parts[0])] = parts.count > 1 ? decoded(parts[1]) : ""
        }
        return fields
    }

    // MARK: Test endpoints (`/_sim/`, not part of MDE)

    private func stats() -> Reply {
        let counters = self.state.withLock { state in
            var counters = state.counters
            counters.inFlight = state.inFlight
            counters.tokenEndpoint.inFlight = state.tokenRequestsInFlight
            return counters
        }
        return .json(.ok, counters)
    }

    /// `POST /_sim/revoke-tokens`: every token issued so far is refused from now on (401), as
    /// after an admin revoked the app's sessions; the fixed `--token` stays valid.
    private func revokeTokens() -> Reply {
        let revoked = self.state.withLock { $0.tokens.revokeAll(now: .now()) }
        return .json(.ok, ["revoked": revoked])
    }

    private func currentFaults() -> Reply {
        .json(.ok, self.state.withLock { $0.faults.settings })
    }

    /// Applies a partial fault update all at once, or not at all when any part is invalid.
    private func changeFaults(_ request: SimulatorRequest) -> Reply {
        let unknown = JSON.objectKeys(of: request.body).subtracting(FaultPlan.Settings.fieldNames)
        guard unknown.isEmpty else {
            return .upstreamError(
                .badRequest, code: "InvalidRequestBody",
                message: "Unknown fault setting(s): \(unknown.sorted().joined(separator: ", ")). Known: \(FaultPlan.Settings.fieldNames.sorted().joined(separator: ", ")).")
        }
        let update: FaultPlan.Settings
        do {
            update = try JSON.decode(FaultPlan.Settings.self, from: request.body)
        } catch {
            return .upstreamError(.badRequest, code: "InvalidRequestBody", message: error.message)
        }
        let result = self.state.withLock { state -> Result<FaultPlan.Settings, BodyError> in
            let plan: FaultPlan
            do throws(BodyError) {
                plan = try state.faults.updated(with: update, defaultRetryAfter: self.configuration.retryAfterSeconds)
            } catch {
                return .failure(error)
            }
            if let problem = plan.validationError() { return .failure(BodyError(problem)) }
            state.faults = plan
            return .success(plan.settings)
        }
        switch result {
        case .success(let settings): return .json(.ok, settings)
        case .failure(let error): return .upstreamError(.badRequest, code: "InvalidRequestBody", message: error.message)
        }
    }

    /// Zeroes the counters and forgets the arrival log. Fault settings, issued (and revoked)
    /// tokens and the memory of presented assertion `jti`s stay; requests still in flight stay
    /// counted as in flight.
    private func reset() -> Reply {
        let counters = self.state.withLock { state in
            state.counters = Counters()
            state.counters.maxInFlight = state.inFlight
            state.counters.inFlight = state.inFlight
            state.counters.tokenEndpoint.maxInFlight = state.tokenRequestsInFlight
            state.counters.tokenEndpoint.inFlight = state.tokenRequestsInFlight
            state.arrivals.removeAll()
            return state.counters
        }
        return .json(.ok, counters)
    }

    // MARK: Accounting

    /// Called just before the answer is written (or the connection dropped), after any delay.
    func finish(_ request: SimulatorRequest, _ decision: Decision) {
        let outcome: String
        switch decision.action {
        case .reply(let reply): outcome = String(reply.status.code)
        case .drop: outcome = "dropped"
        }
        switch decision.counted {
        case .cancel:
            self.state.withLock { state in
                state.inFlight -= 1
                if case .drop = decision.action {
                    state.counters.dropped += 1
                } else {
                    state.counters.answered[outcome, default: 0] += 1
                }
            }
        case .token:
            self.state.withLock { $0.tokenRequestsInFlight -= 1 }
        case .none:
            break
        }
        self.log?.write("\(request.method.rawValue) \(request.path) \(outcome)")
    }
}
