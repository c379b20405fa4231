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
    /// Every API's limits, unless `apiLimits` names the API.
    var limits: [Limit]
    /// Limits for single APIs, by API name (`--api-limits`); an empty list: unlimited.
    var apiLimits: [String: [Limit]] = [:]
    /// From the creation of a machine action to Succeeded (InProgress from half of it).
    var actionDuration: TimeAmount = .seconds(60)
    /// At most this many created machine actions are kept (the oldest are forgotten).
    var maxActions: Int = 100_000
    /// Create a second action of a kind on a machine while the first is Pending or InProgress,
    /// instead of refusing it with 400 ActiveRequestAlreadyExists as MDE does.
    var allowDuplicateActions = false
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
    /// What follows the `?` (still percent-encoded), or "".
    var query: String = ""
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
        /// An MDE API call, named by its API: in `answered`, `dropped`, `inFlight` and
        /// `maxInFlight`, in total and in `byApi`.
        case api(String)
        /// In `tokenEndpoint.inFlight` and `tokenEndpoint.maxInFlight`.
        case token
    }

    var action: Action
    /// How long to hold the answer (the `--delay` and `tokenDelayMs` faults), without blocking
    /// the event loop.
    var delay: TimeAmount = .zero
    var counted = Counted.none
}

/// The simulated MDE API: routing, the strict limits (per API), injected faults, the machine
/// actions it created, tokens and counters.
///
/// One instance serves every connection on every event loop, so all mutable state sits behind one
/// lock, taken once to decide a request and once to account for its answer.
final class Simulator: Sendable {
    private let configuration: SimulatorConfiguration
    private let factory: MachineActionFactory
    private let log: RequestLog?
    private let state: Mutex<State>

    private struct State: Sendable {
        /// Per API name: its arrival log and how many of its calls are being answered.
        var apis: [String: APIState]
        var actions: ActionStore
        /// Arrivals per API and id (`"isolate <machine id>"`), for `failFirst`.
        var attempts: [String: Int] = [:]
        var faults: FaultPlan
        var tokens: TokenIssuer
        var random: SplitMix64
        var counters = Counters()
        var inFlight = 0
        var tokenRequestsInFlight = 0
    }

    private struct APIState: Sendable {
        var arrivals: ArrivalLog
        var inFlight = 0
    }

    /// The counters `GET /_sim/stats` reports and `POST /_sim/reset` zeroes.
    ///
    /// The top-level API counters (`arrivals`, `violations`, `answered`, `dropped`, `inFlight`,
    /// `maxInFlight`, `arrivalTimesNs`) are totals over every API; `byApi` has them per API.
    /// When only cancel is called, the totals are cancel's, as before there were other APIs.
    struct Counters: Encodable, Sendable {
        var arrivals = 0
        var violations = 0
        var answered: [String: Int] = [:]
        /// Arrivals per target id, lowercased: the machine action id (cancel, get) or the machine
        /// id (the POSTs on a machine); listings have none.
        var arrivalsById: [String: Int] = [:]
        /// Every API by name, each present from the start.
        var byApi: [String: APICounters] = Dictionary(uniqueKeysWithValues: SimulatedAPI.names.map { ($0, APICounters()) })
        /// The machine actions the simulator holds (created by the POSTs on a machine), at the
        /// moment of the answer; not a counter (`/_sim/reset` keeps the actions unless asked).
        var storedActions = 0
        /// Every token request, whatever its answer; `tokenEndpoint` tells them apart.
        var tokenRequests = 0
        var tokenEndpoint = TokenCounters()
        var dropped = 0
        var maxInFlight = 0
        var inFlight = 0
        /// Wall-clock (CLOCK_REALTIME) nanoseconds since the epoch of each API arrival, in order,
        /// so a benchmark can compare them with the gateway's ledger; the first
        /// `maxRecordedArrivalTimes` after a reset only.
        var arrivalTimesNs: [Int64] = []
    }

    /// One API's counters (`byApi.<name>` in `GET /_sim/stats`), with the same meanings as the totals.
    struct APICounters: Encodable, Sendable {
        var arrivals = 0
        var violations = 0
        var answered: [String: Int] = [:]
        var dropped = 0
        var inFlight = 0
        var maxInFlight = 0
        /// When each of this API's calls arrived (wall clock, ns), in order; bounded like the total.
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
                apis: Dictionary(uniqueKeysWithValues: SimulatedAPI.names.map { name in
                    (name, APIState(arrivals: ArrivalLog(limits: configuration.apiLimits[name] ?? configuration.limits)))
                }),
                actions: ActionStore(duration: configuration.actionDuration, capacity: configuration.maxActions),
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
        if route.first == "api", let (api, id) = SimulatedAPI.route(Array(segments.dropFirst())) {
            return self.only(api.method, request) { self.call(api, request, id: id) }
        }
        switch route.count {
        case 4 where route[1] == "oauth2" && route[2] == "v2.0" && route[3] == "token":
            return self.only(.POST, request) { self.token(request, tenant: String(segments[0])) }
        case 2 where route[0] == "_sim" && route[1] == "stats":
            return self.only(.GET, request) { Decision(action: .reply(self.stats())) }
        case 2 where route[0] == "_sim" && route[1] == "faults":
            if request.method == .GET { return Decision(action: .reply(self.currentFaults())) }
            return self.only(.POST, request) { Decision(action: .reply(self.changeFaults(request))) }
        case 2 where route[0] == "_sim" && route[1] == "reset":
            return self.only(.POST, request) { Decision(action: .reply(self.reset(request))) }
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

    /// A call's input once validated (outside the lock: it depends on nothing the lock guards).
    private enum Input {
        case cancel(id: String, comment: String)
        case get(id: String)
        case list(ListingQuery)
        case create(type: String, scope: String?, comment: String, machineId: String, sha1: String?)
    }

    /// Input refused before it does anything: a bad id, body or query.
    private struct Refusal: Error {
        var code: String
        var message: String
    }

    /// The verdict on one API call, reached under the lock; the answer is built outside it.
    private enum Verdict {
        case violation(Limit)
        case unauthorized(String)
        case refused(Refusal)
        case fault(FaultPlan.Fault)
        case answer(Outcome)
    }

    /// What the API did with a valid call that got past the limits, the token and the faults.
    private enum Outcome {
        /// One created action, in this state: answered with the API's success status.
        case action(ActionSnapshot)
        case listing([ActionSnapshot])
        /// A cancel of an id this simulator never created (or forgot), not starting with 00000000.
        case cancelledUnknown(comment: String)
        /// A cancel or get of an unknown id.
        case actionNotFound
        /// A cancel of an action already Succeeded or Cancelled.
        case alreadyFinal(ActionSnapshot)
        /// A POST on a machine whose id starts with 00000000.
        case machineNotFound
        /// A POST on a machine with an action of the same kind still Pending or InProgress.
        case activeRequestExists(ActionSnapshot)
    }

    /// One call of an MDE API. The order of checks is the strict upstream's: every arrival is
    /// logged and judged against its API's limits first (an unauthenticated or malformed call
    /// still counts), then the token, the id, the body or query, then injected faults, then the
    /// answer.
    ///
    /// Known machine actions (the ones the POSTs on a machine created) behave as in MDE: get
    /// shows their current state, cancel works while they are Pending or InProgress. A cancel of
    /// an unknown id keeps the simulator's original contract, which tests and benchmarks rely on:
    /// ids starting with 00000000 are not found (404), any other id is cancelled (200, with
    /// details derived from the id).
    private func call(_ api: SimulatedAPI, _ request: SimulatorRequest, id: String?) -> Decision {
        let key = id?.lowercased()  // GUIDs and machine ids compare case-insensitively
        let authorization = request.headers.first(name: "Authorization")
        let input = Result { () throws(Refusal) in try Self.input(for: api, request, id: id) }
        let attemptKey = api.name + " " + (key ?? "")

        let (verdict, delay) = self.state.withLock { state -> (Verdict, TimeAmount) in
            let now = NIODeadline.now()
            state.counters.arrivals += 1
            state.counters.byApi[api.name, default: APICounters()].arrivals += 1
            if state.counters.arrivalTimesNs.count < Self.maxRecordedArrivalTimes {
                let wall = Self.wallClockNanoseconds()
                state.counters.arrivalTimesNs.append(wall)
                state.counters.byApi[api.name]!.arrivalTimesNs.append(wall)
            }
            if let key { state.counters.arrivalsById[key, default: 0] += 1 }
            let attempt = state.attempts[attemptKey, default: 0] + 1
            state.attempts[attemptKey] = attempt
            state.inFlight += 1
            state.counters.maxInFlight = max(state.counters.maxInFlight, state.inFlight)
            state.apis[api.name]!.inFlight += 1
            state.counters.byApi[api.name]!.maxInFlight = max(
                state.counters.byApi[api.name]!.maxInFlight, state.apis[api.name]!.inFlight)
            let delay = state.faults.delay(for: api.name)

            if let limit = state.apis[api.name]!.arrivals.record(at: now) {
                state.counters.violations += 1
                state.counters.byApi[api.name]!.violations += 1
                return (.violation(limit), delay)
            }
            if let problem = state.tokens.rejection(ofAuthorization: authorization, now: now) {
                return (.unauthorized(problem), delay)
            }
            let valid: Input
            switch input {
            case .success(let parsed): valid = parsed
            case .failure(let refusal): return (.refused(refusal), delay)
            }
            if state.faults.applies(to: api.name), let fault = state.faults.fault(attempt: attempt, random: &state.random) {
                return (.fault(fault), delay)
            }
            return (.answer(self.perform(valid, state: &state, now: now)), delay)
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
        case .refused(let refusal):
            action = .reply(.upstreamError(.badRequest, code: refusal.code, message: refusal.message))
        case .fault(let fault):
            action = Self.injected(fault)
        case .answer(let outcome):
            action = .reply(self.reply(api, id: id ?? "", outcome))
        }
        return Decision(action: action, delay: delay, counted: .api(api.name))
    }

    /// Validates a call's id and body or query, in that order.
    private static func input(for api: SimulatedAPI, _ request: SimulatorRequest, id: String?) throws(Refusal) -> Input {
        switch api.target {
        case .machineAction:
            let id = id ?? ""
            guard GUID.isValid(id) else {
                throw Refusal(code: "BadRequest", message: "Machine action id '\(id)' is not a valid GUID.")
            }
            if api.method == .GET { return .get(id: id) }
            let body = try Self.body(request)
            return .cancel(id: id, comment: body.Comment)
        case .machine:
            let id = id ?? ""
            guard HexId.isValid(id) else {
                throw Refusal(code: "BadRequest", message: "Machine id '\(id)' is not valid: 40 hexadecimal digits expected.")
            }
            let body = try Self.body(request)
            var scope: String?
            var sha1: String?
            if let parameter = api.parameter {
                guard let raw = body.value(of: parameter.name) else {
                    throw Refusal(
                        code: "InvalidRequestBody",
                        message: "The request body lacks the property '\(parameter.name)' (names are case-sensitive).")
                }
                if let allowed = parameter.allowed {
                    guard let canonical = allowed.first(where: { $0.lowercased() == raw.lowercased() }) else {
                        throw Refusal(
                            code: "InvalidRequestBody",
                            message: "\(parameter.name) must be one of \(allowed.joined(separator: ", ")), got '\(raw)'.")
                    }
                    scope = canonical
                } else {
                    guard HexId.isValid(raw) else {
                        throw Refusal(
                            code: "InvalidRequestBody",
                            message: "\(parameter.name) must be a SHA-1: 40 hexadecimal digits, got '\(raw)'.")
                    }
                    sha1 = raw
                }
            }
            return .create(type: api.actionType ?? api.name, scope: scope, comment: body.Comment, machineId: id, sha1: sha1)
        case .none:
            switch ListingQuery.parse(request.query) {
            case .success(let query): return .list(query)
            case .failure(let error): throw Refusal(code: "BadRequest", message: error.message)
            }
        }
    }

    private static func body(_ request: SimulatorRequest) throws(Refusal) -> ActionBody {
        do {
            return try JSON.decode(ActionBody.self, from: request.body)
        } catch {
            throw Refusal(code: "InvalidRequestBody", message: error.message)
        }
    }

    /// The body of the POSTs; property names are case-sensitive, as upstream. Other properties
    /// are ignored, as ASP.NET does.
    private struct ActionBody: Decodable {
        var Comment: String
        var IsolationType: String?
        var ScanType: String?
        var Sha1: String?

        func value(of name: String) -> String? {
            switch name {
            case "IsolationType": IsolationType
            case "ScanType": ScanType
            case "Sha1": Sha1
            default: nil
            }
        }
    }

    /// What a valid call does to the machine actions; under the lock.
    private func perform(_ input: Input, state: inout State, now: NIODeadline) -> Outcome {
        switch input {
        case .cancel(let id, let comment):
            switch state.actions.cancel(
                id, requestor: self.configuration.clientId, comment: comment, now: now, wallClock: .now())
            {
            case .cancelled(let snapshot): return .action(snapshot)
            case .final(let snapshot): return .alreadyFinal(snapshot)
            case .unknown: return id.hasPrefix("00000000") ? .actionNotFound : .cancelledUnknown(comment: comment)
            }
        case .get(let id):
            return state.actions.find(id, at: now).map { .action($0) } ?? .actionNotFound
        case .list(let query):
            return .listing(state.actions.list(query, at: now))
        case .create(let type, let scope, let comment, let machineId, let sha1):
            if machineId.hasPrefix("00000000") { return .machineNotFound }
            let action = self.factory.created(
                type: type, scope: scope, comment: comment, machineId: machineId, sha1: sha1, at: .now(), uptime: now)
            if !self.configuration.allowDuplicateActions, let active = state.actions.active(like: action, at: now) {
                return .activeRequestExists(active)
            }
            state.actions.insert(action)
            return .action(state.actions.snapshot(of: action, at: now))
        }
    }

    private func reply(_ api: SimulatedAPI, id: String, _ outcome: Outcome) -> Reply {
        switch outcome {
        case .action(let snapshot):
            return .json(api.success, self.factory.entity(snapshot))
        case .listing(let snapshots):
            return .json(.ok, MachineActionList(value: snapshots.map { self.factory.entity($0, includesContext: false) }))
        case .cancelledUnknown(let comment):
            return .json(.ok, self.factory.cancelledAction(id: id, comment: comment, at: .now()))
        case .actionNotFound:
            return .upstreamError(.notFound, code: "ResourceNotFound", message: "Machine action \(id) was not found")
        case .alreadyFinal(let snapshot):
            // MDE documents only that cancel applies to actions "not yet in final state"; the
            // simulator answers the others 400 with the generic code "BadRequest".
            return .upstreamError(
                .badRequest, code: "BadRequest",
                message: "Machine action \(snapshot.action.id) is already in a final state (\(snapshot.status.rawValue)) and cannot be cancelled.")
        case .machineNotFound:
            return .upstreamError(.notFound, code: "ResourceNotFound", message: "Machine \(id) was not found")
        case .activeRequestExists(let active):
            // MDE refuses a second action of a kind on a machine while one is pending this way.
            return .upstreamError(
                .badRequest, code: "ActiveRequestAlreadyExists",
                message: "Action is already in progress: \(active.action.type) action \(active.action.id) on machine \(active.action.machineId) is \(active.status.rawValue).")
        }
    }

    /// The answer for an injected fault.
    private static func injected(_ fault: FaultPlan.Fault) -> Decision.Action {
        switch fault {
        case .tooManyRequests(let retryAfter):
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
            return .reply(.upstreamError(.tooManyRequests, code: "TooManyRequests", message: message, headers: headers))
        case .internalServerError:
            return .reply(.upstreamError(
                .internalServerError, code: "InternalServerError", message: "An unexpected error occurred (injected)."))
        case .serviceUnavailable:
            return .reply(.upstreamError(
                .serviceUnavailable, code: "ServiceUnavailable", message: "The service is temporarily unavailable (injected)."))
        case .drop:
            return .drop
        }
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
            Self.fillGauges(&counters, from: state)
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

    /// The values of `Counters` that describe the moment rather than count (in flight, stored).
    private static func fillGauges(_ counters: inout Counters, from state: State) {
        counters.inFlight = state.inFlight
        counters.tokenEndpoint.inFlight = state.tokenRequestsInFlight
        for (name, api) in state.apis {
            counters.byApi[name, default: APICounters()].inFlight = api.inFlight
        }
        counters.storedActions = state.actions.count
    }

    /// Zeroes the counters (totals and `byApi`) and forgets every API's arrival log, so each API
    /// has its whole quota again. Fault settings, issued (and revoked) tokens and the memory of
    /// presented assertion `jti`s stay; requests still in flight stay counted as in flight.
    ///
    /// The machine actions created so far stay too (they are MDE's state, not a counter: a get
    /// still finds them, and a pending isolate still blocks a second one), unless the query says
    /// `actions=forget`.
    private func reset(_ request: SimulatorRequest) -> Reply {
        let forgetActions = request.query.split(separator: "&").contains("actions=forget")
        let counters = self.state.withLock { state in
            state.counters = Counters()
            state.counters.maxInFlight = state.inFlight
            state.counters.tokenEndpoint.maxInFlight = state.tokenRequestsInFlight
            for name in state.apis.keys {
                state.apis[name]!.arrivals.removeAll()
                state.counters.byApi[name, default: APICounters()].maxInFlight = state.apis[name]!.inFlight
            }
            state.attempts.removeAll()
            if forgetActions { state.actions.removeAll() }
            var counters = state.counters
            Self.fillGauges(&counters, from: state)
            return counters
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
        case .api(let name):
            self.state.withLock { state in
                state.inFlight -= 1
                state.apis[name]?.inFlight -= 1
                if case .drop = decision.action {
                    state.counters.dropped += 1
                    state.counters.byApi[name, default: APICounters()].dropped += 1
                } else {
                    state.counters.answered[outcome, default: 0] += 1
                    state.counters.byApi[name, default: APICounters()].answered[outcome, default: 0] += 1
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
