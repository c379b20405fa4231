import Foundation
import Logging
import MDEGateConfig
import MDEGateCore
import MDEGateTransport

/// Where the bearer token for the MDE API comes from (`auth.*`).
///
/// The dispatch path asks for the token synchronously before it spends a slot, so a source
/// answers from what it holds and fetches in the background; when a fetch ends it calls the
/// handler given to `onChange`, and the gateway looks again.
public protocol TokenSource: AnyObject, Sendable {
    /// `token_file`, `client_secret` or `client_certificate`, for `/v1/status`.
    var mode: String { get }
    /// The token to send now, or what stands in the way (never the token or a secret).
    func token(at now: Timestamp) -> Result<String, TokenError>
    /// The upstream answered 401 to `token`: get a new one (OAuth2 fetches one; a token file is
    /// read again, and may still hold the same).
    func rejected(_ token: String)
    /// When the token in hand expires, if the source knows.
    var tokenExpiresAt: Timestamp? { get }
    /// The last problem getting a token, nil once one was obtained.
    var lastError: String? { get }
    /// Runs `handler` whenever a background fetch ends, in success or failure.
    func onChange(_ handler: @escaping @Sendable () -> Void)
}

public struct TokenError: Error, Sendable, CustomStringConvertible {
    public var message: String
    public var description: String { message }

    public init(message: String) {
        self.message = message
    }
}

extension GatewayConfiguration.Auth {
    /// The token source these settings describe. Credentials are read and checked now (the
    /// secret file is readable and not empty, the key belongs to the certificate), so a daemon
    /// refuses to start, or a reload is refused, with a message that names the file.
    public func makeTokenSource(
        transport: CurlTransport, logger: Logger, metrics: GatewayMetrics? = nil
    ) throws(TokenError) -> any TokenSource {
        if case .tokenFile(let path) = method { return TokenFileProvider(path: path) }
        guard let oauth = try checkedOAuthCredential() else {
            throw TokenError(message: "auth: no credentials are configured")
        }
        for note in oauth.notes { logger.warning("\(note)") }
        return OAuth2TokenProvider(
            tokenURL: tokenURL, clientID: oauth.clientID, scope: scope, credential: oauth.credential,
            transport: transport, logger: logger, fetched: { metrics?.tokenRequest(succeeded: $0) })
    }

    /// Reads and checks the credentials as `serve` will (`mdegate check-config`): the client
    /// secret file is readable and not empty; the key is an RSA key that belongs to the
    /// certificate. A token file is not checked: another tool may not have written it yet.
    /// Returns notes for the operator (an expired certificate); throws what would stop `serve`.
    public func checkCredentials() throws(TokenError) -> [String] {
        try checkedOAuthCredential()?.notes ?? []
    }

    /// The OAuth2 credential these settings name, read and checked, with notes for the operator;
    /// nil for a token file (or no credentials).
    private func checkedOAuthCredential() throws(TokenError)
        -> (clientID: String, credential: OAuth2TokenProvider.Credential, notes: [String])?
    {
        switch method {
        case .tokenFile, nil:
            return nil
        case .clientSecret(_, let clientID, let secretFile):
            _ = try OAuth2TokenProvider.readSecret(secretFile)
            return (clientID, .secretFile(secretFile), [])
        case .clientCertificate(_, let clientID, let certificateFile, let keyFile):
            let signer = try ClientAssertionSigner(certificateFile: certificateFile, keyFile: keyFile, clientID: clientID)
            let notes = signer.notValidAfter < Date()
                ? ["the client certificate \(certificateFile) expired on \(signer.notValidAfter); the identity platform will refuse it"]
                : []
            return (clientID, .certificate(signer), notes)
        }
    }
}
