import Crypto
import Foundation
import JWTKit
import MDEGateCore
import NIOHTTP1
import _CryptoExtras

/// Checks a client assertion (RFC 7523 `private_key_jwt`, "certificate credentials") the way the
/// Microsoft identity platform does, so a client that passes here passes there.
///
/// The assertion is a compact JWS: `alg` RS256, the registered certificate named by its thumbprint
/// (`x5t#S256`, or the older SHA-1 `x5t`), an RSASSA-PKCS1-v1_5 SHA-256 signature by that
/// certificate's key, and claims `aud` = the token URL the request was sent to, `iss` = `sub` =
/// the client id, `exp` in the future but at most an hour ahead, `nbf` (if present) not in the
/// future, and a `jti` never presented before. Each refusal says which rule failed, with the
/// identity platform's AADSTS code for it.
struct ClientAssertionCheck: Sendable {
    static let assertionType = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"

    /// An assertion may be valid for at most this long from now.
    static let maximumLifetimeSeconds = 3600.0
    /// JWT times are whole seconds: a client that writes `nbf` = now rounded up, or `exp` = now +
    /// 1 h rounded up, is not refused for the rounding. No other clock skew is forgiven.
    static let roundingLeewaySeconds = 1.0

    let clientId: String
    let certificates: [RegisteredCertificate]

    /// The AADSTS code of a refused replay, which the simulator's counters single out.
    static let replayCode = 50013

    /// `jti` values already presented, with the `exp` after which a replay would be refused as
    /// expired anyway; kept until then, so the memory is bounded by an hour of sign-ins.
    private var seen: [String: Double] = [:]

    init(clientId: String, certificates: [RegisteredCertificate]) {
        self.clientId = clientId
        self.certificates = certificates
    }

    /// Checks `assertion`, presented at `audience` (`{scheme}://{Host}{path}` of the request) at
    /// wall-clock time `now`, and remembers its `jti` when it passes.
    mutating func check(_ assertion: String, audience: String, now: Timestamp) throws(TokenIssuer.Refusal) {
        let token = try Self.parse(assertion)
        let certificate = try self.registeredCertificate(for: token.header)
        try Self.verifySignature(of: token, with: certificate)
        let claims = token.claims

        guard let issuer = claims.iss else { throw Self.missing("iss") }
        guard let subject = claims.sub else { throw Self.missing("sub") }
        guard issuer == self.clientId, subject == self.clientId else {
            throw TokenIssuer.Refusal(.unauthorized, "invalid_client", code: 700021,
                "Client assertion application identifier doesn't match 'client_id' parameter: iss '\(issuer)' and sub '\(subject)' must both be '\(self.clientId)'.")
        }
        guard let audienceClaim = claims.aud else { throw Self.missing("aud") }
        guard audienceClaim == audience else {
            throw TokenIssuer.Refusal(.unauthorized, "invalid_client", code: 50012,
                "Client assertion audience claim does not match the token endpoint it was sent to: expected '\(audience)', got '\(audienceClaim)'.")
        }

        let seconds = now.secondsSinceEpoch
        guard let expiry = claims.exp else { throw Self.missing("exp") }
        guard expiry > seconds else {
            throw Self.outsideTimeRange("the assertion expired at \(Self.text(expiry))", now: seconds)
        }
        guard expiry <= seconds + Self.maximumLifetimeSeconds + Self.roundingLeewaySeconds else {
            throw Self.outsideTimeRange(
                "its expiry \(Self.text(expiry)) is more than \(Int(Self.maximumLifetimeSeconds)) seconds ahead", now: seconds)
        }
        if let notBefore = claims.nbf, notBefore > seconds + Self.roundingLeewaySeconds {
            throw Self.outsideTimeRange("it is not valid before \(Self.text(notBefore))", now: seconds)
        }

        guard let jti = claims.jti, !jti.isEmpty else { throw Self.missing("jti") }
        self.seen = self.seen.filter { $0.value > seconds }
        guard self.seen[jti] == nil else {
            throw TokenIssuer.Refusal(.unauthorized, "invalid_client", code: Self.replayCode,
                "Assertion is invalid: the client assertion with jti '\(jti)' was already presented; sign a new assertion with a fresh jti for every token request.")
        }
        self.seen[jti] = expiry
    }

    // MARK: The parts

    /// A string `aud` only: the identity platform refuses an audience array.
    private struct Claims: JWTPayload {
        var aud: String?
        var iss: String?
        var sub: String?
        var exp: Double?
        var nbf: Double?
        var jti: String?

        /// The rules are checked one by one in `check`, each with the identity platform's code.
        func verify(using _: some JWTAlgorithm) {}
    }

    private struct Token {
        var header: JWTHeader
        var claims: Claims
        /// `base64url(header).base64url(claims)`, the bytes the signature covers.
        var signingInput: Substring
        var signature: Data
    }

    /// jwt-kit's parser: three base64url parts, a JSON header and JSON claims, nothing verified yet.
    private static func parse(_ assertion: String) throws(TokenIssuer.Refusal) -> Token {
        let parsed: (header: JWTHeader, payload: Claims, signature: Data)
        do {
            parsed = try DefaultJWTParser().parse(Array(assertion.utf8), as: Claims.self)
        } catch let error as JWTError {
            throw Self.malformed(error.reason ?? "\(error.errorType)")
        } catch {
            throw Self.malformed("\(error)")
        }
        guard !parsed.signature.isEmpty, let lastDot = assertion.lastIndex(of: ".") else {
            throw Self.malformed("its signature is empty")
        }
        return Token(header: parsed.header, claims: parsed.payload, signingInput: assertion[..<lastDot], signature: parsed.signature)
    }

    /// The registered certificate the header names, after its algorithm is checked.
    private func registeredCertificate(for header: JWTHeader) throws(TokenIssuer.Refusal) -> RegisteredCertificate {
        guard let algorithm = header.alg else { throw Self.malformed("its header has no 'alg'") }
        guard algorithm == "RS256" else {
            throw TokenIssuer.Refusal(.badRequest, "invalid_request", code: 5002738,
                "Invalid JWT token. '\(algorithm)' is not a supported signature algorithm. Supported signing algorithms are: 'RS256'.")
        }
        guard header.x5tS256 != nil || header.x5t != nil else {
            throw TokenIssuer.Refusal(.unauthorized, "invalid_client", code: 700027,
                "Client assertion contains an invalid signature. [Reason - The key was not found: the header names no certificate; put its thumbprint in 'x5t#S256' (or 'x5t').]")
        }
        let match = self.certificates.first { certificate in
            (header.x5tS256 ?? certificate.sha256Thumbprint) == certificate.sha256Thumbprint
                && (header.x5t ?? certificate.sha1Thumbprint) == certificate.sha1Thumbprint
        }
        guard let match else {
            let thumbprint = header.x5tS256.map { "x5t#S256 '\($0)'" } ?? "x5t '\(header.x5t ?? "")'"
            throw TokenIssuer.Refusal(.unauthorized, "invalid_client", code: 700027,
                "Client assertion contains an invalid signature. [Reason - The key was not found., Thumbprint of key used by client: \(thumbprint). No certificate with that thumbprint is registered for app '\(self.clientId)' (see --client-certificate).]")
        }
        return match
    }

    private static func verifySignature(of token: Token, with certificate: RegisteredCertificate) throws(TokenIssuer.Refusal) {
        let signature = _RSA.Signing.RSASignature(rawRepresentation: token.signature)
        let digest = SHA256.hash(data: Array(token.signingInput.utf8))
        guard certificate.publicKey.isValidSignature(signature, for: digest, padding: .insecurePKCS1v1_5) else {
            throw TokenIssuer.Refusal(.unauthorized, "invalid_client", code: 700027,
                "Client assertion contains an invalid signature. [Reason - The signature does not verify with the key of the registered certificate \(certificate.sha256Thumbprint) (RS256: RSASSA-PKCS1-v1_5 with SHA-256 over base64url(header).base64url(claims)).]")
        }
    }

    // MARK: Refusals

    private static func malformed(_ problem: String) -> TokenIssuer.Refusal {
        TokenIssuer.Refusal(.badRequest, "invalid_request", code: 50027, "JWT token is invalid or malformed: \(problem).")
    }

    private static func missing(_ claim: String) -> TokenIssuer.Refusal {
        TokenIssuer.Refusal(.badRequest, "invalid_request", code: 90014,
            "The required field '\(claim)' is missing from the credential. Ensure that you have all the necessary parameters for the login request.")
    }

    private static func outsideTimeRange(_ problem: String, now: Double) -> TokenIssuer.Refusal {
        TokenIssuer.Refusal(.unauthorized, "invalid_client", code: 700024,
            "Client assertion is not within its valid time range: \(problem). Current time: \(Self.text(now)).")
    }

    /// A JWT time for a message; a number far outside any plausible date is shown as it came.
    private static func text(_ seconds: Double) -> String {
        (0...1e10).contains(seconds) ? Timestamp(secondsSinceEpoch: seconds).iso8601 : "\(seconds)"
    }
}
