import Foundation
import MDEGateConfig
import Logging
import MDEGateCore
import MDEGateTransport
import MDEGateWire
import Synchronization

/// OAuth2 client credentials against the Microsoft identity platform: a client secret or a
/// certificate-signed client assertion buys an access token, which is cached and refreshed
/// ahead of its expiry.
///
/// - Single flight: at most one token request is under way at any time, however many
///   dispatches want a token; they get the cached one or wait for that request.
/// - Token requests go through the same libcurl transport as API calls (so `upstream.proxy`
///   and `upstream.ca_file` apply) and are not API calls: they never touch the quota.
/// - A failed request is retried with backoff (1 s doubling to 10 s, so a login host that is
///   back is used within 10 s) while work waits; its problem shows in `/v1/status` and the
///   log, never the secret, assertion or token.
public final class OAuth2TokenProvider: TokenSource {
    public enum Credential: Sendable {
        /// The secret is read from this file for every token request, so a rotated secret is
        /// used without a restart.
        case secretFile(String)
        case certificate(ClientAssertionSigner)
    }

    public let tokenURL: String
    public let clientID: String
    public let scope: String
    private let credential: Credential
    private let transport: CurlTransport
    private let logger: Logger
    private let now: @Sendable () -> Timestamp
    /// Told of every token request's outcome (for `mdegate_token_requests_total`).
    private let fetched: @Sendable (_ succeeded: Bool) -> Void

    private struct State: Sendable {
        var token: String?
        var expiresAt: Timestamp?
        /// When a background refresh of a still valid token starts.
        var refreshAt: Timestamp?
        /// After this the token is not handed out (it could expire on the way).
        var usableUntil: Timestamp?
        var fetching = false
        var failures = 0
        var retryAt: Timestamp?
        var lastError: String?
        var handlers: [@Sendable () -> Void] = []
    }
    private let state = Mutex(State())

    public var mode: String {
        switch credential {
        case .secretFile: "client_secret"
        case .certificate: "client_certificate"
        }
    }

    public init(
        tokenURL: String, clientID: String, scope: String, credential: Credential, transport: CurlTransport,
        logger: Logger, now: @escaping @Sendable () -> Timestamp = Gateway.wallClock,
        fetched: @escaping @Sendable (_ succeeded: Bool) -> Void = { _ in }
    ) {
        self.fetched = fetched
        self.tokenURL = tokenURL
        self.clientID = clientID
        self.scope = scope
        self.credential = credential
        self.transport = transport
        self.logger = logger
        self.now = now
    }

    public var tokenExpiresAt: Timestamp? { state.withLock { $0.token == nil ? nil : $0.expiresAt } }
    public var lastError: String? { state.withLock { $0.lastError } }

    public func onChange(_ handler: @escaping @Sendable () -> Void) {
        state.withLock { $0.handlers.append(handler) }
    }

    public func token(at time: Timestamp) -> Result<String, TokenError> {
        let (answer, startFetch) = state.withLock { state -> (Result<String, TokenError>, Bool) in
            let mayFetch = !state.fetching && (state.retryAt.map { time >= $0 } ?? true)
            if let token = state.token, let usableUntil = state.usableUntil, time < usableUntil {
                let refreshDue = state.refreshAt.map { time >= $0 } ?? false
                if refreshDue && mayFetch { state.fetching = true }
                return (.success(token), refreshDue && mayFetch)
            }
            state.token = nil
            if mayFetch { state.fetching = true }
            let problem = state.lastError.map { "no access token: \($0)" } ?? "waiting for an access token from \(tokenURL)"
            return (.failure(TokenError(message: problem)), mayFetch)
        }
        if startFetch { Task { await self.refresh() } }
        return answer
    }

    public func rejected(_ token: String) {
        let startFetch = state.withLock { state -> Bool in
            guard state.token == token else { return false }
            state.token = nil
            guard !state.fetching else { return false }
            state.fetching = true
            return true
        }
        if startFetch {
            logger.notice("the API refused the access token (401); fetching a new one")
            Task { await self.refresh() }
        }
    }

    // MARK: Fetching

    /// The one token request in flight: its outcome updates the cache, then wakes the gateway.
    private func refresh() async {
        let started = now()
        let outcome: Result<(token: String, lifetime: Duration), TokenError>
        do throws(TokenError) {
            outcome = .success(try await fetch(at: started))
        } catch {
            outcome = .failure(error)
        }
        fetched(outcome.isSuccess)
        let (handlers, nextLook, repeated) = state.withLock { state -> ([@Sendable () -> Void], Timestamp?, Bool) in
            let previousError = state.lastError
            state.fetching = false
            switch outcome {
            case .success(let grant):
                // Refresh at half the lifetime for short tokens, five minutes ahead for the
                // usual hour; stop handing a token out a little before it expires.
                state.token = grant.token
                state.expiresAt = started + grant.lifetime
                state.refreshAt = started + grant.lifetime - min(.seconds(300), grant.lifetime / 2)
                state.usableUntil = started + grant.lifetime - min(.seconds(60), grant.lifetime / 10)
                state.failures = 0
                state.retryAt = nil
                state.lastError = nil
            case .failure(let error):
                state.failures += 1
                let backoff = Duration.seconds(min(10, 1 << min(state.failures - 1, 4)))
                state.retryAt = now() + backoff
                state.lastError = error.message
            }
            // A held token is refreshed at `refreshAt` even when no call asks for it, and a failed
            // request is tried again on its own, so a call after a quiet hour does not wait for a
            // token and status shows a fixed secret working without a call to prove it.
            let repeated = state.lastError != nil && state.lastError == previousError
            return (state.handlers, state.retryAt ?? state.refreshAt, repeated)
        }
        switch outcome {
        case .success(let grant):
            logger.info(
                "access token obtained",
                metadata: ["tokenURL": "\(tokenURL)", "expiresIn": "\(grant.lifetime)", "credential": "\(mode)"])
        case .failure(let error):
            // The same problem again (every 10 s while it lasts) is not news.
            logger.log(
                level: repeated ? .debug : .error, "could not get an access token; retrying",
                metadata: ["problem": "\(error.message)"])
        }
        if let nextLook {
            Task { [weak self] in
                guard let wait = self.map({ nextLook - $0.now() }) else { return }
                // A little late rather than early: the sleep's clock is not the wall clock the
                // due time is on, and waking early would find nothing due and end the chain.
                try? await Task.sleep(for: max(.zero, wait) + .milliseconds(20))
                self?.refreshIfDue()
            }
        }
        for handler in handlers { handler() }
    }

    /// Starts a background refresh if the held token is due for one; a no-op otherwise.
    private func refreshIfDue() {
        _ = token(at: now())
    }

    private func fetch(at time: Timestamp) async throws(TokenError) -> (token: String, lifetime: Duration) {
        var form: [(String, String)] = [
            ("grant_type", "client_credentials"), ("client_id", clientID), ("scope", scope),
        ]
        switch credential {
        case .secretFile(let path):
            form.append(("client_secret", try Self.readSecret(path)))
        case .certificate(let signer):
            let assertion = try await signer.assertion(audience: tokenURL, now: Date(timeIntervalSince1970: time.secondsSinceEpoch))
            form.append(("client_assertion_type", ClientAssertionSigner.assertionType))
            form.append(("client_assertion", assertion))
        }
        let request = TransportRequest(
            method: "POST", url: tokenURL,
            headers: [.contentType: "application/x-www-form-urlencoded", .accept: "application/json", .userAgent: "mdegate"],
            body: Array(Self.formEncoded(form).utf8))
        let response: TransportResponse
        do {
            response = try await transport.send(request)
        } catch {
            throw TokenError(message: "could not reach the token endpoint \(tokenURL): \(error)")
        }
        let answer = try? JSON.decoder.decode(TokenAnswer.self, from: Data(response.body))
        guard response.status == 200 else {
            let reason = [answer?.error, answer?.error_description.map(Self.firstSentences)].compactMap { $0 }.joined(separator: ": ")
            throw TokenError(
                message: "the token endpoint \(tokenURL) answered \(response.status)" + (reason.isEmpty ? "" : " (\(reason))"))
        }
        guard let token = answer?.access_token, !token.isEmpty, let seconds = answer?.expiresIn, seconds > 0 else {
            throw TokenError(message: "the token endpoint \(tokenURL) answered 200 without an access_token and expires_in")
        }
        return (token, .seconds(seconds))
    }

    /// The identity platform's answer; `expires_in` is a number in v2.0 and a string in v1.0.
    private struct TokenAnswer: Decodable {
        var access_token: String?
        var expires_in: JSONValue?
        var error: String?
        var error_description: String?

        var expiresIn: Int? {
            switch expires_in {
            case .number(let value): Int(exactly: value.rounded(.down))
            case .string(let text): Int(text)
            default: nil
            }
        }
    }

    /// `AADSTS7000215: Invalid client secret provided. Ensure ... Trace ID: ...`: the sentence
    /// that says what is wrong, without the trace ids that follow.
    private static func firstSentences(_ description: String) -> String {
        let cut = description.range(of: " Trace ID:").map { String(description[..<$0.lowerBound]) } ?? description
        return String(cut.prefix(300)).trimmingCharacters(in: .whitespacesAndNewlines)
    }

    static func readSecret(_ path: String) throws(TokenError) -> String {
        guard let data = try? FileContents.read(atPath: path) else {
            throw TokenError(message: "cannot read the client secret file \(path): it does not exist or is not readable by this user")
        }
        let secret = String(decoding: data, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
        guard !secret.isEmpty else {
            throw TokenError(
                message: "the client secret file \(path) is empty; put the secret's value there (with systemd, in the file LoadCredential=client-secret: names)")
        }
        return secret
    }

    /// `application/x-www-form-urlencoded`: unreserved characters as they are, the rest as %XX.
    static func formEncoded(_ fields: [(String, String)]) -> String {
        let allowed = CharacterSet(charactersIn: "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
        return fields.map { name, value in
            "\(name.addingPercentEncoding(withAllowedCharacters: allowed) ?? "")=\(value.addingPercentEncoding(withAllowedCharacters: allowed) ?? "")"
        }.joined(separator: "&")
    }
}

extension Result {
    fileprivate var isSuccess: Bool {
        if case .success = self { true } else { false }
    }
}
