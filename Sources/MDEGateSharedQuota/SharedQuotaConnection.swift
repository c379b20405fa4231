import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import NIOSSL
import PostgresNIO

/// Where the shared ledger lives and how to reach it: what `shared_quota.url`, `password_file`
/// and `ca_file` say, read and checked. Its description never shows the password.
public struct SharedQuotaConnection: Sendable, CustomStringConvertible {
    public enum Endpoint: Sendable, Equatable {
        case tcp(host: String, port: Int)
        /// The server's socket file (`<directory>/.s.PGSQL.<port>`).
        case unixSocket(path: String)
    }

    public enum Security: Sendable, Equatable {
        /// No TLS: a Unix socket, a loopback host, or `sslmode=disable` said so.
        case plain
        /// TLS with the server's certificate verified against the system's CAs and `caFile`, and
        /// its name against the host: nothing turns the check off.
        case verifiedTLS(caFile: String?)
    }

    public var endpoint: Endpoint
    public var username: String
    public var database: String
    public var password: String?
    public var security: Security
    /// How long a connection may take to open, and a slot decision to come back.
    public var timeout: Duration

    public init(
        endpoint: Endpoint, username: String, database: String, password: String?, security: Security,
        timeout: Duration = .seconds(2)
    ) {
        self.endpoint = endpoint
        self.username = username
        self.database = database
        self.password = password
        self.security = security
        self.timeout = timeout
    }

    /// `postgresql://user@host:port/database (TLS verified)`: never the password.
    public var description: String {
        var notes: [String] = []
        let place: String
        switch endpoint {
        case .tcp(let host, let port): place = "\(host.contains(":") ? "[\(host)]" : host):\(port)"
        case .unixSocket(let path):
            place = ""
            notes.append("socket \(path)")
        }
        switch security {
        case .plain: notes.append("no TLS")
        case .verifiedTLS(let caFile): notes.append("TLS verified" + (caFile.map { " with \($0)" } ?? ""))
        }
        return "postgresql://\(username)@\(place)/\(database) (\(notes.joined(separator: ", ")))"
    }

    /// The TLS configuration for a verified connection; throws when the CA file cannot be read.
    func tlsConfiguration() throws -> TLSConfiguration? {
        guard case .verifiedTLS(let caFile) = security else { return nil }
        var tls = TLSConfiguration.makeClientConfiguration()
        tls.certificateVerification = .fullVerification
        if let caFile {
            let certificates: [NIOSSLCertificate]
            do {
                certificates = try NIOSSLCertificate.fromPEMFile(caFile)
            } catch {
                throw SharedQuotaError("cannot read the CA file \(caFile): \(error)")
            }
            guard !certificates.isEmpty else { throw SharedQuotaError("the CA file \(caFile) holds no PEM certificate") }
            tls.trustRoots = .default
            tls.additionalTrustRoots = [.certificates(certificates)]
        }
        return tls
    }

    /// A pool of connections to the server (the daemon's), with the timeouts set.
    public func makeClient(logger: Logger) throws -> PostgresClient {
        var configuration: PostgresClient.Configuration
        switch endpoint {
        case .unixSocket(let path):
            configuration = .init(unixSocketPath: path, username: username, password: password, database: database)
        case .tcp(let host, let port):
            let tls: PostgresClient.Configuration.TLS = try tlsConfiguration().map { .require($0) } ?? .disable
            configuration = .init(host: host, port: port, username: username, password: password, database: database, tls: tls)
        }
        configuration.options.connectTimeout = timeout
        configuration.options.maximumConnections = 4
        configuration.options.keepAliveBehavior = .init(frequency: .seconds(15))
        configuration.options.connectionIdleTimeout = .seconds(300)
        return PostgresClient(configuration: configuration, backgroundLogger: logger)
    }

    /// Opens one connection and checks the schema: what `check-config` reports, and the reason
    /// the daemon gives when slot requests fail. Never throws; the answer names the problem.
    public func probe(logger: Logger) async -> Probe {
        let tls: PostgresConnection.Configuration.TLS
        do {
            tls = try tlsConfiguration().map { .require(try NIOSSLContext(configuration: $0)) } ?? .disable
        } catch {
            return .unreachable("\(error)")
        }
        var configuration: PostgresConnection.Configuration
        switch endpoint {
        case .unixSocket(let path):
            configuration = .init(unixSocketPath: path, username: username, password: password, database: database)
        case .tcp(let host, let port):
            configuration = .init(host: host, port: port, username: username, password: password, database: database, tls: tls)
        }
        configuration.options.connectTimeout = .init(timeout)
        let settings = configuration
        let attempt: Result<Probe, any Error> = await withDeadline(timeout * 2) {
            let connection = try await PostgresConnection.connect(configuration: settings, id: 1, logger: logger)
            // Closed before the answer, not in the background: a process that exits right after
            // (`check-config`) would otherwise leave the connection open.
            let version: Int32?
            do {
                version = try await SharedQuotaSchema.appliedVersion(connection, logger: logger)
            } catch {
                try? await connection.close()
                throw error
            }
            try? await connection.close()
            return .reachable(schemaVersion: version)
        }
        switch attempt {
        case .success(let probe): return probe
        case .failure(let error): return .unreachable(Self.describe(error))
        }
    }

    /// What `probe` found.
    public enum Probe: Sendable, Equatable {
        /// Connected; the schema version applied there (nil: mdegate's tables do not exist yet).
        case reachable(schemaVersion: Int32?)
        case unreachable(String)
    }

    /// A readable, secret-free reason for a database error. postgres-nio's own description is a
    /// placeholder by design; the server's message and the connection error are what an
    /// operator needs, and neither holds the password.
    public static func describe(_ error: any Error) -> String {
        if let error = error as? PSQLError {
            if let message = error.serverInfo?[.message] {
                let state = error.serverInfo?[.sqlState].map { " (SQLSTATE \($0))" } ?? ""
                return "the server refused: \(message)\(state)"
            }
            if let underlying = error.underlying { return "\(error.code): \(describe(underlying))" }
            switch error.code {
            case .sslUnsupported: return "the server does not offer TLS, which this connection requires"
            case .authMechanismRequiresPassword:
                return "the server asks for a password and none is configured (shared_quota.password_file)"
            default: return "\(error.code)"
            }
        }
        if let error = error as? NIOSSLError { return "TLS failed: \(error)" }
        if let error = error as? NIOConnectionError {
            let reasons = error.connectionErrors.map { "\($0.target): \($0.error)" }
            return "cannot connect: " + (reasons.isEmpty ? "\(error)" : reasons.joined(separator: "; "))
        }
        return "\(error)"
    }
}

/// No answer in time: the network went silent, or the pool could not open a connection (it
/// keeps trying in the background, so the reason is found by `SharedQuotaConnection.probe`).
public struct SharedQuotaTimeout: Error, CustomStringConvertible {
    public let limit: Duration
    public var description: String { "no answer from the database within \(limit)" }
}

/// Runs `body`, but answers after `limit` at the latest: a query on a network that went silent
/// must not hold the caller. The body goes on in the background when it is late; its result is
/// then dropped (a slot it took stays spent, which never overspends).
public func withDeadline<T: Sendable>(
    _ limit: Duration, _ body: @escaping @Sendable () async throws -> T
) async -> Result<T, any Error> {
    let once = NIOLockedValueBox<CheckedContinuation<Result<T, any Error>, Never>?>(nil)
    return await withCheckedContinuation { continuation in
        once.withLockedValue { $0 = continuation }
        let timer = Task {
            try? await Task.sleep(for: limit)
            once.withLockedValue { $0.take() }?
                .resume(returning: .failure(SharedQuotaTimeout(limit: limit)))
        }
        Task {
            let result: Result<T, any Error>
            do { result = .success(try await body()) } catch { result = .failure(error) }
            once.withLockedValue { $0.take() }?.resume(returning: result)
            timer.cancel()
        }
    }
}
