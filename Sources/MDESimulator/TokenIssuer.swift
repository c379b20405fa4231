import Foundation
import MDEGateCore
import NIOCore
import NIOHTTP1

/// The simulator's stand-in for the Microsoft identity platform's client-credentials flow
/// (`POST /{tenant}/oauth2/v2.0/token`), and the bearer-token check of the API.
///
/// A client authenticates with the app's secret or, when certificates are registered
/// (`--client-certificate`), with a signed client assertion instead (see `ClientAssertionCheck`).
/// The fixed `--token` is always accepted (unless it is empty), so scripts can skip the token
/// dance; tokens issued here are accepted until they expire or are revoked, so a client's refresh
/// logic can be exercised with a short `--token-lifetime` or `POST /_sim/revoke-tokens`.
struct TokenIssuer: Sendable {
    var tenant: String
    var clientId: String
    var clientSecret: String
    /// Nil when `--token ""` turned the fixed token off.
    var staticToken: String?
    var lifetime: TimeAmount

    /// Issued tokens, kept until they expire (revoked ones too, to say why they are refused).
    private var issued: [String: IssuedToken] = [:]
    private var assertions: ClientAssertionCheck

    private struct IssuedToken: Sendable {
        /// Monotonic, like every time the simulator judges by.
        var expiry: NIODeadline
        var revoked = false
    }

    init(
        tenant: String, clientId: String, clientSecret: String, staticToken: String, lifetime: TimeAmount,
        certificates: [RegisteredCertificate] = []
    ) {
        self.tenant = tenant
        self.clientId = clientId
        self.clientSecret = clientSecret
        self.staticToken = staticToken.isEmpty ? nil : staticToken
        self.lifetime = lifetime
        self.assertions = ClientAssertionCheck(clientId: clientId, certificates: certificates)
    }

    /// How a client proved it is the app.
    enum Credential: Sendable {
        case secret, assertion
    }

    /// A successful token answer, field names as the identity platform spells them.
    struct Grant: Encodable, Sendable {
        var token_type = "Bearer"
        var expires_in: Int
        var ext_expires_in: Int
        var access_token: String
        /// Not part of the answer: for the simulator's counters.
        var credential: Credential

        private enum CodingKeys: String, CodingKey {
            case token_type, expires_in, ext_expires_in, access_token
        }
    }

    /// A refused token request in the identity platform's error shape.
    struct Refusal: Error, Encodable {
        var status: HTTPResponseStatus
        /// The AADSTS number, also the one entry of `error_codes`.
        var code: Int
        var error: String
        var error_description: String
        var error_codes: [Int]
        var timestamp: String
        var trace_id = GUID.make()
        var correlation_id = GUID.make()

        init(_ status: HTTPResponseStatus, _ error: String, code: Int, _ description: String) {
            self.status = status
            self.code = code
            self.error = error
            self.error_codes = [code]
            self.error_description = "AADSTS\(code): \(description) Trace ID: \(self.trace_id)"
                + " Correlation ID: \(self.correlation_id) Timestamp: \(Timestamp.now().iso8601)"
            self.timestamp = Timestamp.now().iso8601
        }

        private enum CodingKeys: String, CodingKey {
            case error, error_description, error_codes, timestamp, trace_id, correlation_id
        }
    }

    /// Answers a client-credentials request, checking what the identity platform checks, in its order.
    ///
    /// `audience` is the URL the request was sent to (`{scheme}://{Host}{path}`), which a client
    /// assertion's `aud` must name; `now` judges token lifetimes, `wallClock` the assertion's times.
    mutating func grant(
        tenant: String, form: [String: String], audience: String, now: NIODeadline, wallClock: Timestamp
    ) -> Result<Grant, Refusal> {
        guard tenant.lowercased() == self.tenant.lowercased() else {
            return .failure(Refusal(.badRequest, "invalid_request", code: 90002,
                "Tenant '\(tenant)' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud."))
        }
        guard form["grant_type"] == "client_credentials" else {
            return .failure(Refusal(.badRequest, "unsupported_grant_type", code: 70003,
                "The app requested an unsupported grant type '\(form["grant_type"] ?? "")'; this endpoint expects client_credentials."))
        }
        guard let clientId = form["client_id"], clientId == self.clientId else {
            return .failure(Refusal(.badRequest, "unauthorized_client", code: 700016,
                "Application with identifier '\(form["client_id"] ?? "")' was not found in the directory '\(self.tenant)'."))
        }
        let credential: Credential
        do {
            credential = try self.authenticate(form: form, audience: audience, wallClock: wallClock)
        } catch {
            return .failure(error)
        }
        guard let scope = form["scope"], !scope.isEmpty else {
            return .failure(Refusal(.badRequest, "invalid_request", code: 900144,
                "The request body must contain the following parameter: 'scope'."))
        }
        guard scope.hasSuffix("/.default") else {
            return .failure(Refusal(.badRequest, "invalid_scope", code: 1002012,
                "The provided value for scope \(scope) is not valid. Client credential flows must have a scope value with /.default suffixed to the resource identifier (application ID URI)."))
        }

        self.issued = self.issued.filter { $0.value.expiry > now }
        let token = self.makeToken(scope: scope)
        self.issued[token] = IssuedToken(expiry: now + self.lifetime)
        let seconds = Int(self.lifetime.nanoseconds / 1_000_000_000)
        return .success(Grant(expires_in: seconds, ext_expires_in: seconds, access_token: token, credential: credential))
    }

    /// Checks the one credential the request presents: a secret, or a client assertion.
    private mutating func authenticate(
        form: [String: String], audience: String, wallClock: Timestamp
    ) throws(Refusal) -> Credential {
        let presentsAssertion = form["client_assertion"] != nil || form["client_assertion_type"] != nil
        switch (form["client_secret"], presentsAssertion) {
        case (nil, false):
            throw Refusal(.unauthorized, "invalid_client", code: 7000218,
                "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.")
        case (.some, true):
            throw Refusal(.badRequest, "invalid_request", code: 90023,
                "The request presents both a client secret and a client assertion; send exactly one of 'client_secret' or 'client_assertion'.")
        case (let secret?, false):
            guard secret == self.clientSecret else {
                throw Refusal(.unauthorized, "invalid_client", code: 7000215,
                    "Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app '\(self.clientId)'.")
            }
            return .secret
        case (nil, true):
            guard let type = form["client_assertion_type"], !type.isEmpty else {
                throw Refusal(.badRequest, "invalid_request", code: 90014,
                    "The required field 'client_assertion_type' is missing from the credential; it must be '\(ClientAssertionCheck.assertionType)'.")
            }
            guard type == ClientAssertionCheck.assertionType else {
                throw Refusal(.badRequest, "invalid_request", code: 90011,
                    "Unexpected client assertion type '\(type)'; the only one supported is '\(ClientAssertionCheck.assertionType)'.")
            }
            guard let assertion = form["client_assertion"], !assertion.isEmpty else {
                throw Refusal(.badRequest, "invalid_request", code: 90014,
                    "The required field 'client_assertion' is missing from the credential. Ensure that you have all the necessary parameters for the login request.")
            }
            guard !self.assertions.certificates.isEmpty else {
                throw Refusal(.unauthorized, "invalid_client", code: 700027,
                    "Client assertion contains an invalid signature. [Reason - The key was not found: app '\(self.clientId)' has no certificate credentials registered (start the simulator with --client-certificate).]")
            }
            try self.assertions.check(assertion, audience: audience, now: wallClock)
            return .assertion
        }
    }

    /// Makes every token issued so far invalid, as an admin who revokes the app's sessions would;
    /// the fixed `--token` stays valid. Returns how many unexpired tokens were revoked.
    mutating func revokeAll(now: NIODeadline) -> Int {
        var revoked = 0
        for (token, issued) in self.issued where issued.expiry > now && !issued.revoked {
            self.issued[token]?.revoked = true
            revoked += 1
        }
        return revoked
    }

    /// Why an `Authorization` header is not accepted, or nil when it is.
    func rejection(ofAuthorization header: String?, now: NIODeadline) -> String? {
        guard let header, !header.isEmpty else { return "Authorization header is missing." }
        let parts = header.split(separator: " ", maxSplits: 1)
        guard parts.count == 2, parts[0].lowercased() == "bearer" else {
            return "Authorization header must be 'Bearer <token>'."
        }
        let token = parts[1].trimmingCharacters(in: .whitespaces)
        if token == self.staticToken { return nil }
        guard let issued = self.issued[token] else { return "The access token is invalid." }
        if issued.revoked { return "The access token has been revoked." }
        return issued.expiry > now ? nil : "The access token has expired."
    }

    /// A token shaped like the identity platform's (an unsigned JWT with `exp`, `tid`, `appid`),
    /// so tools that peek into their token find what they expect. Only this simulator accepts it.
    private func makeToken(scope: String) -> String {
        let issuedAt = Int(Timestamp.now().secondsSinceEpoch)
        let claims: [String: Any] = [
            "aud": String(scope.dropLast("/.default".count)),
            "iss": "https://sts.windows.net/\(self.tenant)/",
            "iat": issuedAt, "nbf": issuedAt,
            "exp": issuedAt + Int(self.lifetime.nanoseconds / 1_000_000_000),
            "appid": self.clientId, "tid": self.tenant, "jti": GUID.make(),
        ]
        let header = #"{"typ":"JWT","alg":"none"}"#
        let payload = (try? JSONSerialization.data(withJSONObject: claims, options: [.sortedKeys, .withoutEscapingSlashes])) ?? Data()
        return "\(Base64URL.encode(Data(header.utf8))).\(Base64URL.encode(payload))."
    }
}
