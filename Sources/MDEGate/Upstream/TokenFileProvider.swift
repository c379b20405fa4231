import Foundation
import MDEGateConfig
import MDEGateCore
import Synchronization

/// A bearer token kept fresh by another tool in a file (`auth.token_file`).
///
/// The file is looked at again at most once a second (the dispatch path asks for the token on
/// every attempt) and read again whenever its modification time or size changed, so a rotated
/// token is picked up within a second, without a restart. The token itself is never logged.
public final class TokenFileProvider: TokenSource {
    public let path: String
    public var mode: String { "token_file" }
    public var tokenExpiresAt: Timestamp? { nil }
    private struct Cache: Sendable {
        var token: String?
        var modified: Date?
        var size: Int?
        var lastError: String?
        var checkedAt: ContinuousClock.Instant?
    }
    /// How long a token read from the file is used before the file is looked at again.
    private static let recheckInterval: Duration = .seconds(1)
    private let cache = Mutex(Cache())

    public init(path: String) {
        self.path = path
    }

    /// The current token, or an error that says what is wrong with the file (never its content).
    public func token(at _: Timestamp) -> Result<String, TokenError> {
        let now = ContinuousClock.now
        if let fresh = cache.withLock({ cache -> String? in
            guard let checkedAt = cache.checkedAt, now - checkedAt < Self.recheckInterval else { return nil }
            return cache.token
        }) {
            return .success(fresh)
        }
        let attributes: [FileAttributeKey: Any]
        do {
            attributes = try FileManager.default.attributesOfItem(atPath: path)
        } catch {
            return fail("cannot read auth.token_file \(path): the file does not exist or is not accessible")
        }
        let modified = attributes[.modificationDate] as? Date
        let size = (attributes[.size] as? NSNumber)?.intValue
        if let cached = cache.withLock({ cache -> String? in
            guard cache.modified == modified, cache.size == size, let token = cache.token else { return nil }
            cache.checkedAt = now
            return token
        }) {
            return .success(cached)
        }
        guard let data = try? FileContents.read(atPath: path) else {
            return fail("cannot read auth.token_file \(path): permission denied or not a file")
        }
        let token = String(decoding: data, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
        guard !token.isEmpty else { return fail("auth.token_file \(path) is empty") }
        guard !token.contains(where: { $0.isWhitespace || $0.isNewline }) else {
            return fail("auth.token_file \(path) holds more than one word; it must hold the bearer token alone")
        }
        cache.withLock { $0 = Cache(token: token, modified: modified, size: size, lastError: nil, checkedAt: now) }
        return .success(token)
    }

    /// The last problem with the file, for `/v1/status`; nil once a token was read.
    public var lastError: String? { cache.withLock { $0.lastError } }

    /// A refused token makes the next call look at the file again at once: another tool may
    /// have rotated it since. If it did not, the retry is refused too, and that answer is final.
    public func rejected(_ token: String) {
        cache.withLock { cache in
            if cache.token == token { cache.checkedAt = nil }
        }
    }

    /// The file is looked at on every dispatch round; nothing runs in the background.
    public func onChange(_ handler: @escaping @Sendable () -> Void) {}

    private func fail(_ message: String) -> Result<String, TokenError> {
        cache.withLock { $0 = Cache(token: nil, modified: nil, size: nil, lastError: message) }
        return .failure(TokenError(message: message))
    }
}
