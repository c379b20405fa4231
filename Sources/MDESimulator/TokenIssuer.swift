import Foundation
import MDEGateCore
import NIOCore
import NIOHTTP1

/// The simulator's stand-in for the Microsoft identity platform's client-credentials flow
/// (`POST /{tenant}/oauth2/v2.0/token`), and the bearer-token check of the API.
///
/// The fixed `--token` is always accepted, so scripts can skip the token dance; tokens issued here
/// are accepted until they expire, so a client's refresh logic can be exercised with a short
/// `--token-lifetime`.
struct TokenIssuer: Sendable {
    var tenant: String
    var clientId: String
    var clientSecret: String
    var staticToken: String
    var lifetime: TimeAmount

    /// Issued tokens and when (monotonic) they stop being accepted.
    private var issued: [String: NIODeadline] = [:]

    init(tenant: String, clientId: String, clientSecret: String, staticToken: String, lifetime: TimeAmount) {
        self.tenant = tenant
        self.clientId = clientId
        self.clientSecret = clientSecret
        self.staticToken = staticToken
        self.lifetime = lifetime
    }

    /// A successful token answer, field names as the identity platform spells them.
    struct Grant: Encodable, Sendable {
        var token_type = "Bearer"
        var expires_in: Int
        var ext_expires_in: Int
        var access_token: String
    }

    /// A refused token request in the identity platform's error shape.
    struct Refusal: Error, Encodable {
        var status: HTTPResponseStatus
        var error: String
        var error_description: String
        var error_codes: [Int]
        var timestamp: String
        var trace_id = GUID.make()
        var correlation_id = GUID.make()

        init(_ status: HTTPResponseStatus, _ error: String, code: Int, _ description: String) {
            self.status = status
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
    mutating func grant(tenant: String, form: [String: String], now: NIODeadline) -> Result<Grant, Refusal> {
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
        guard form["client_secret"] == self.clientSecret else {
            return .failure(Refusal(.unauthorized, "invalid_client", code: 7000215,
                "Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app '\(clientId)'."))
        }
        guard let scope = form["scope"], !scope.isEmpty else {
            return .failure(Refusal(.badRequest, "invalid_request", code: 900144,
                "The request body must contain the following parameter: 'scope'."))
        }
        guard scope.hasSuffix("/.default") else {
            return .failure(Refusal(.badRequest, "invalid_scope", code: 1002012,
                "The provided value for scope \(scope) is not valid. Client credential flows must have a scope value with /.default suffixed to the resource identifier (application ID URI)."))
        }

        self.issued = self.issued.filter { $0.value > now }
        let token = self.makeToken(scope: scope)
        self.issued[token] = now + self.lifetime
        let seconds = Int(self.lifetime.nanoseconds / 1_000_000_000)
        return .success(Grant(expires_in: seconds, ext_expires_in: seconds, access_token: token))
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
        guard let expiry = self.issued[token] else { return "The access token is invalid." }
        return expiry > now ? nil : "The access token has expired."
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
        return "\(Data(header.utf8).base64URL).\(payload.base64URL)."
    }
}

extension Data {
    fileprivate var base64URL: String {
        self.base64EncodedString()
            .replacingOccurrences(of: "+", with: "-")
            .replacingOccurrences(of: "/", with: "_")
            .replacingOccurrences(of: "=", with: "")
    }
}
