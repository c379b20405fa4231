import Foundation
import HTTPTypes
import MDEGateTransport

/// A running `mde-simulator` on a free loopback port: the strict stand-in for the MDE API and
/// its token endpoint, over plain HTTP or, given a `TestPKI`, over HTTPS.
final class SimulatorProcess: Sendable {
    let process: TestProcess
    let port: Int
    /// The fixed bearer token the API always accepts.
    let token: String
    /// The app registration the token endpoint accepts.
    static let tenant = "sim-tenant"
    var tenant: String { Self.tenant }
    static let clientId = "sim-client"
    var clientId: String { Self.clientId }
    let clientSecret: String
    /// The CA the simulator's HTTPS certificate chains to; nil for plain HTTP.
    let caFile: String?
    /// Talks to this simulator (trusting `caFile`), directly.
    let client: HTTPClient

    var scheme: String { caFile == nil ? "http" : "https" }
    var baseURL: String { "\(scheme)://127.0.0.1:\(port)" }
    var tokenPath: String { "/\(tenant)/oauth2/v2.0/token" }
    /// The token endpoint, as a client configures it (`auth.token_url`) and as a client
    /// assertion's `aud` must name it.
    var tokenURL: String { baseURL + tokenPath }
    /// `host:port` as a proxy sees it in `CONNECT` (and the key of `ConnectProxy`'s counts).
    var authority: String { "127.0.0.1:\(port)" }

    /// Starts the simulator with `arguments` added to the fixed ones (loopback, port 0, a token
    /// and a client secret of this test's own, a fixed seed) and waits until it listens.
    ///
    /// - `tls`: serve HTTPS with `tls.server`, trusted through `tls.caFile`.
    /// - `clientCertificates`: PEM certificates registered for the app (`--client-certificate`),
    ///   e.g. `pki.client.certificatePath`; client assertions signed with their keys are granted.
    ///
    /// Give the token and secret through the parameters, not `arguments`, so that `token` and
    /// `clientSecret` tell the truth.
    init(
        arguments: [String] = [],
        token: String = "sim-token-\(randomSuffix())",
        clientSecret: String = "sim-secret-\(randomSuffix())",
        tls: TestPKI? = nil,
        clientCertificates: [String] = []
    ) async throws {
        var fixed = [
            "--host", "127.0.0.1", "--port", "0", "--token", token, "--seed", "7",
            "--tenant", Self.tenant, "--client-id", Self.clientId, "--client-secret", clientSecret,
        ]
        if let tls {
            fixed += ["--tls-certificate", tls.server.certificatePath, "--tls-key", tls.server.keyPath]
        }
        fixed += clientCertificates.flatMap { ["--client-certificate", $0] }
        let process = try await TestProcess(
            name: "mde-simulator",
            executable: Binaries.simulator,
            arguments: fixed + arguments,
            environment: TestProcess.environment()
        )
        let scheme = tls == nil ? "http" : "https"
        do {
            let line = try await process.waitForLine(containing: "mde-simulator listening on \(scheme)://", in: [.stdout])
            guard let port = line.split(separator: ":").last.flatMap({ Int($0) }) else {
                throw HarnessError("cannot read the port from '\(line)'")
            }
            self.port = port
            client = try HTTPClient(baseURL: "\(scheme)://127.0.0.1:\(port)", caFile: tls?.caFile)
        } catch {
            await process.stop()
            throw error
        }
        self.process = process
        self.token = token
        self.clientSecret = clientSecret
        caFile = tls?.caFile
    }

    /// The simulator's counters (`GET /_sim/stats`).
    func stats() async throws -> SimulatorStats {
        let response = try await client.get("/_sim/stats")
        guard response.status == 200 else { throw HarnessError("GET /_sim/stats: \(response.summary)") }
        return try JSONDecoder().decode(SimulatorStats.self, from: Data(response.body))
    }

    /// Changes the injected faults (`POST /_sim/faults`), e.g. `["next429": ["count": 1, "retryAfter": 2]]`.
    func setFaults(_ faults: JSON) async throws {
        let response = try await client.post("/_sim/faults", json: faults)
        guard response.status == 200 else { throw HarnessError("POST /_sim/faults \(faults): \(response.summary)") }
    }

    /// How the token endpoint fails during a login outage (`tokenOutage` in `/_sim/faults`).
    enum TokenOutage: String, Sendable {
        case none
        /// 503 with the identity platform's error body.
        case serviceUnavailable = "503"
        /// The connection is closed without an answer.
        case drop
    }

    /// Starts or ends a login outage: until `.none`, every token request fails this way.
    func setTokenOutage(_ outage: TokenOutage) async throws {
        try await setFaults(["tokenOutage": .string(outage.rawValue)])
    }

    /// Holds every token answer this long, so concurrent token requests would overlap
    /// (`tokenEndpoint.maxInFlight` then shows whether a client fetches one token at a time).
    func setTokenDelay(_ delay: Duration) async throws {
        try await setFaults(["tokenDelayMs": .number(delay / .milliseconds(1))])
    }

    /// Makes every token issued so far answer 401 (`POST /_sim/revoke-tokens`); the fixed `token`
    /// stays valid. Returns how many tokens were revoked.
    @discardableResult
    func revokeTokens() async throws -> Int {
        let response = try await client.send("POST", "/_sim/revoke-tokens")
        guard response.status == 200, let revoked = try response.json()["revoked"]?.int else {
            throw HarnessError("POST /_sim/revoke-tokens: \(response.summary)")
        }
        return revoked
    }

    /// Zeroes the counters and every API's quota (`POST /_sim/reset`); faults, issued tokens, seen
    /// `jti`s and (unless `forgetActions`) the machine actions created so far stay.
    func reset(forgetActions: Bool = false) async throws {
        let response = try await client.send("POST", forgetActions ? "/_sim/reset?actions=forget" : "/_sim/reset")
        guard response.status == 200 else { throw HarnessError("POST /_sim/reset: \(response.summary)") }
    }

    /// Sends `fields` to the token endpoint as a form, exactly as given (no fields are added).
    func requestToken(_ fields: [(name: String, value: String)]) async throws -> TransportResponse {
        try await client.postForm(tokenPath, fields: fields)
    }

    /// The form fields of a client-credentials request with the client secret.
    var secretGrantFields: [(name: String, value: String)] {
        [("grant_type", "client_credentials"), ("client_id", clientId), ("client_secret", clientSecret),
         ("scope", "https://api.securitycenter.microsoft.com/.default")]
    }

    /// The form fields of a client-credentials request with a client assertion.
    func assertionGrantFields(assertion: String) -> [(name: String, value: String)] {
        [("grant_type", "client_credentials"), ("client_id", clientId),
         ("client_assertion_type", "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"),
         ("client_assertion", assertion), ("scope", "https://api.securitycenter.microsoft.com/.default")]
    }

    /// A fresh access token from the token endpoint, granted for the client secret.
    func issueToken() async throws -> String {
        let response = try await requestToken(secretGrantFields)
        guard response.status == 200, let token = try response.json()["access_token"]?.string else {
            throw HarnessError("POST \(tokenPath) with the client secret: \(response.summary)")
        }
        return token
    }

    /// A cancel sent straight to the simulator with `bearer` (default: the fixed `token`).
    func cancel(_ id: String, bearer: String? = nil) async throws -> TransportResponse {
        try await client.post(
            GatewayClient.cancelPath(id), json: ["Comment": "sent by the test"],
            headers: [.authorization: "Bearer \(bearer ?? token)"])
    }

    // MARK: The machine-action family

    /// One call of the simulated MDE API, straight to the simulator: `path` as sent (below the
    /// base URL, e.g. `/api/machines/<id>/isolate`), with `bearer` (default: the fixed `token`;
    /// "" sends no Authorization header) and, when given, `body` as JSON.
    func call(method: String, path: String, body: JSON? = nil, bearer: String? = nil) async throws -> TransportResponse {
        var headers = HTTPFields()
        let bearer = bearer ?? token
        if !bearer.isEmpty { headers[.authorization] = "Bearer \(bearer)" }
        if body != nil { headers[.contentType] = "application/json" }
        return try await client.send(method, path, headers: headers, body: body?.bytes ?? [])
    }

    /// `POST /api/machines/{machine}/{action}` (e.g. `isolate`, `runAntiVirusScan`) with `body`.
    func machineAction(_ action: String, machine: String, body: JSON, bearer: String? = nil) async throws -> TransportResponse {
        try await call(method: "POST", path: "/api/machines/\(machine)/\(action)", body: body, bearer: bearer)
    }

    /// `POST /api/machines/{machine}/isolate`; answers 201 with the new MachineAction.
    func isolate(_ machine: String, type: String = "Full", comment: String = "isolated by the test") async throws -> TransportResponse {
        try await machineAction("isolate", machine: machine, body: ["Comment": .string(comment), "IsolationType": .string(type)])
    }

    /// `GET /api/machineactions/{id}`.
    func machineActionState(_ id: String) async throws -> TransportResponse {
        try await call(method: "GET", path: "/api/machineactions/\(id)")
    }

    /// `GET /api/machineactions` with OData `options` (e.g. `["$filter": "status eq 'Pending'",
    /// "$top": "5"]`), percent-encoded here.
    func listMachineActions(_ options: [(name: String, value: String)] = []) async throws -> TransportResponse {
        let unreserved = CharacterSet(charactersIn: "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
        let query = options.map { option in
            [option.name, option.value].map { $0.addingPercentEncoding(withAllowedCharacters: unreserved) ?? $0 }
                .joined(separator: "=")
        }.joined(separator: "&")
        return try await call(method: "GET", path: "/api/machineactions" + (query.isEmpty ? "" : "?" + query))
    }

    /// The ids in a listing's `value`, in order.
    static func listedIDs(_ response: TransportResponse) throws -> [String] {
        guard response.status == 200, let value = try response.json()["value"]?.array else {
            throw HarnessError("not a listing: \(response.summary)")
        }
        return value.compactMap { $0["id"]?.string }
    }

    @discardableResult
    func stop() async -> ProcessEnd? {
        client.shutdown()
        return await process.stop()
    }
}

/// What `GET /_sim/stats` reports.
struct SimulatorStats: Decodable, Sendable, CustomStringConvertible {
    /// Answers by status code ("200", "429", ...).
    var answered: [String: Int]
    /// Every cancel request that arrived, whatever its answer: each one spent quota upstream.
    var arrivals: Int
    /// Arrivals per machine action id, lowercased.
    var arrivalsById: [String: Int]
    var dropped: Int
    var inFlight: Int
    var maxInFlight: Int
    /// Every token request, whatever its answer.
    var tokenRequests: Int
    var tokenEndpoint: TokenEndpointStats
    /// Arrivals beyond a configured `--limit`.
    var violations: Int
    /// The same counters per API name (`cancel`, `isolate`, ...); the top-level ones are their sums.
    var byApi: [String: SimulatorAPIStats] = [:]
    /// The machine actions the simulator holds (created by the POSTs on a machine).
    var storedActions: Int?
    /// When each cancel arrived (the simulator's wall clock, ns since the epoch), in order.
    var arrivalTimesNs: [Int64]?

    /// When the `index`-th cancel arrived.
    func arrivalTime(_ index: Int) -> Date? {
        guard let times = arrivalTimesNs, times.indices.contains(index) else { return nil }
        return Date(timeIntervalSince1970: Double(times[index]) / 1e9)
    }

    func arrivals(for id: String) -> Int {
        arrivalsById[id.lowercased()] ?? 0
    }

    /// One API's counters; all zero when the simulator did not report the API.
    func api(_ name: String) -> SimulatorAPIStats {
        byApi[name] ?? SimulatorAPIStats()
    }

    func answered(_ status: Int) -> Int {
        answered[String(status)] ?? 0
    }

    var description: String {
        "arrivals \(arrivals), answered \(answered), violations \(violations), dropped \(dropped), inFlight \(inFlight), "
            + "token requests \(tokenRequests) (\(tokenEndpoint))"
    }
}

/// One API's counters (`byApi.<name>` in `GET /_sim/stats`).
struct SimulatorAPIStats: Decodable, Sendable, Equatable, CustomStringConvertible {
    var arrivals = 0
    var violations = 0
    /// Answers by status code ("201", "429", ...).
    var answered: [String: Int] = [:]
    var dropped = 0
    var inFlight = 0
    var maxInFlight = 0

    func answered(_ status: Int) -> Int {
        answered[String(status)] ?? 0
    }

    var description: String {
        "arrivals \(arrivals), answered \(answered), violations \(violations), dropped \(dropped), maxInFlight \(maxInFlight)"
    }
}

/// What the token endpoint did (`tokenEndpoint` in `GET /_sim/stats`);
/// `granted + refused + outages == tokenRequests`.
struct TokenEndpointStats: Decodable, Sendable, CustomStringConvertible {
    var granted: Int
    var grantedWithSecret: Int
    var grantedWithAssertion: Int
    var refused: Int
    /// Refusals by AADSTS number ("7000215", "700027", ...).
    var refusedByCode: [String: Int]
    /// Client assertions refused because their `jti` had been presented before.
    var replayedJtis: Int
    /// Requests answered by an injected login outage (503 or dropped).
    var outages: Int
    var inFlight: Int
    /// The most token requests that were between arrival and answer at once; with a token
    /// delay, 1 proves a client fetches one token at a time.
    var maxInFlight: Int

    func refused(code: Int) -> Int {
        refusedByCode[String(code)] ?? 0
    }

    var description: String {
        "granted \(granted) (secret \(grantedWithSecret), assertion \(grantedWithAssertion)), refused \(refusedByCode), "
            + "outages \(outages), maxInFlight \(maxInFlight)"
    }
}

/// Eight random lowercase letters and digits, for unique names and short paths.
func randomSuffix(length: Int = 8) -> String {
    let alphabet = Array("abcdefghijklmnopqrstuvwxyz0123456789")
    return String((0..<length).map { _ in alphabet.randomElement()! })
}

/// A fresh random machine action id, in lowercase like the ones MDE hands out.
func machineActionID() -> String {
    UUID().uuidString.lowercased()
}

/// A fresh random machine id: 40 lowercase hex digits, as MDE writes them.
func simulatorMachineID() -> String {
    (0..<40).map { _ in String(UInt8.random(in: 0...15), radix: 16) }.joined()
}

/// A machine id the simulator does not know (its POSTs answer 404 ResourceNotFound).
func unknownMachineID() -> String {
    "00000000" + simulatorMachineID().dropFirst(8)
}

/// A machine action id the simulator does not know (it answers 404 ResourceNotFound).
func unknownMachineActionID() -> String {
    "00000000" + machineActionID().dropFirst(8)
}
