import ArgumentParser
import Foundation
import MDEGateCore
import NIOCore

/// `mde-simulator`: a local stand-in for the Microsoft Defender for Endpoint machine-action API and
/// its token endpoint, strict about rate limits and able to misbehave on purpose.
@main
struct SimulatorCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "mde-simulator",
        abstract: "A local, strict stand-in for the MDE machine-action API, for tests, demos and offline use.",
        discussion: """
            Serves POST /api/machineactions/{id}/cancel and POST /{tenant}/oauth2/v2.0/token over \
            HTTP/1.1 (HTTPS with --tls-certificate and --tls-key), plus test endpoints: \
            GET /_sim/stats, GET|POST /_sim/faults, POST /_sim/reset, POST /_sim/revoke-tokens. \
            Prints "mde-simulator listening on http://HOST:PORT" (https://...) once ready.

            Every cancel arrival counts against the limits, also ones answered 401, 400, 429 or 5xx. \
            An arrival is a violation (answered 429) when N or more earlier arrivals lie within the \
            last W of some --limit N/W.

            The token endpoint grants client_credentials with --client-secret, or, for each \
            --client-certificate, with a client assertion (client_assertion_type \
            urn:ietf:params:oauth:client-assertion-type:jwt-bearer): an RS256 JWT whose header names \
            the certificate by x5t#S256 (or x5t) and whose claims are aud = the token URL as sent \
            (scheme://Host/path), iss = sub = the client id, exp in the future and at most 1 h \
            ahead, nbf not in the future, and a jti never presented before.

            POST /_sim/faults takes any of: fail500Rate, fail503Rate, dropRate, delayMs, failFirst, \
            next429 {count, retryAfter}, next429RetryAfterDate {count, retryAfter} (Retry-After as an \
            HTTP-date), next429WithoutRetryAfter, tokenOutage ("none" | "503" | "drop", until set \
            back to "none"), tokenDelayMs (held before every token answer). \
            POST /_sim/revoke-tokens makes every token issued so far answer 401; the fixed --token \
            stays valid (start with --token "" to have none).
            """
    )

    @Option(help: "The address to listen on.")
    var host = "127.0.0.1"

    @Option(help: "The TCP port; 0 picks a free one.")
    var port = 0

    @Option(help: "Write the chosen port (digits, no newline) to this file, atomically.")
    var portFile: String?

    @Option(help: "A bearer token the API always accepts; \"\" for none (only issued tokens then).")
    var token = "sim-token"

    @Option(help: "The tenant of the token endpoint.")
    var tenant = "sim-tenant"

    @Option(help: "The client id the token endpoint accepts.")
    var clientId = "sim-client"

    @Option(help: "The client secret the token endpoint accepts.")
    var clientSecret = "sim-secret"

    @Option(help: "Seconds an issued access token stays valid.")
    var tokenLifetime = 3600

    @Option(
        name: .customLong("client-certificate"),
        help: ArgumentHelp("A certificate (PEM) registered for the app: client assertions signed with its key are accepted; repeatable.", valueName: "file")
    )
    var clientCertificates: [String] = []

    @Option(help: ArgumentHelp("Serve HTTPS with this certificate chain (PEM, server certificate first); needs --tls-key.", valueName: "file"))
    var tlsCertificate: String?

    @Option(help: ArgumentHelp("The private key (PEM, unencrypted) of --tls-certificate.", valueName: "file"))
    var tlsKey: String?

    @Option(
        name: .customLong("limit"),
        help: ArgumentHelp("A strict limit N/duration, e.g. 5/1s or 100/1m; repeatable. None: unlimited.", valueName: "N/duration"),
        transform: SimulatorCommand.limit
    )
    var limits: [Limit] = []

    @Option(help: "The Retry-After seconds sent with limit violations.")
    var retryAfter = 1

    @Option(name: .customLong("fail-500-rate"), help: "Fraction (0...1) of cancel requests answered 500.")
    var fail500Rate = 0.0

    @Option(name: .customLong("fail-503-rate"), help: "Fraction (0...1) of cancel requests answered 503.")
    var fail503Rate = 0.0

    @Option(help: "Fraction (0...1) of cancel requests read and then closed without an answer.")
    var dropRate = 0.0

    @Option(
        help: ArgumentHelp("Hold every API answer this long, e.g. 250ms or 1.5s.", valueName: "duration"),
        transform: SimulatorCommand.duration
    )
    var delay: Duration?

    @Option(help: "The first K attempts for each machine action id get 503.")
    var failFirst = 0

    @Option(help: "Seed for the injected faults' randomness (default: random, logged at start).")
    var seed: UInt64?

    @Flag(help: "Do not log requests to stderr.")
    var quiet = false

    func validate() throws {
        guard (0...65535).contains(self.port) else { throw ValidationError("--port must be 0...65535.") }
        guard self.tokenLifetime > 0 else { throw ValidationError("--token-lifetime must be positive.") }
        guard self.retryAfter >= 0 else { throw ValidationError("--retry-after must not be negative.") }
        guard (self.tlsCertificate == nil) == (self.tlsKey == nil) else {
            throw ValidationError("--tls-certificate and --tls-key go together: give both to serve HTTPS, or neither for plain HTTP.")
        }
        if let problem = self.faults.validationError() {
            let flag = problem
                .replacingOccurrences(of: "fail500Rate", with: "--fail-500-rate")
                .replacingOccurrences(of: "fail503Rate", with: "--fail-503-rate")
                .replacingOccurrences(of: "dropRate", with: "--drop-rate")
                .replacingOccurrences(of: "failFirst", with: "--fail-first")
            throw ValidationError(flag + ".")
        }
    }

    private var faults: FaultPlan {
        var plan = FaultPlan()
        plan.fail500Rate = self.fail500Rate
        plan.fail503Rate = self.fail503Rate
        plan.dropRate = self.dropRate
        plan.delay = .nanoseconds(self.delay?.nanoseconds ?? 0)
        plan.failFirst = self.failFirst
        plan.next429RetryAfter = self.retryAfter
        return plan
    }

    func run() async throws {
        let seed = self.seed ?? UInt64.random(in: 0...UInt64.max)
        let certificates = try self.clientCertificates.map { path throws(CertificateFileError) in
            try RegisteredCertificate(pemFile: path)
        }
        let tls = try self.tlsCertificate.map { certificate throws(CertificateFileError) in
            try SimulatorServer.tlsContext(certificatePath: certificate, keyPath: self.tlsKey ?? "")
        }
        let scheme = tls == nil ? "http" : "https"
        let configuration = SimulatorConfiguration(
            token: self.token,
            tenant: self.tenant,
            clientId: self.clientId,
            clientSecret: self.clientSecret,
            clientCertificates: certificates,
            tokenLifetime: .seconds(Int64(self.tokenLifetime)),
            limits: self.limits,
            retryAfterSeconds: self.retryAfter,
            faults: self.faults,
            seed: seed,
            quiet: self.quiet,
            scheme: scheme
        )
        let server = SimulatorServer(
            host: self.host, port: self.port, simulator: Simulator(configuration: configuration), tls: tls)
        let portFile = self.portFile
        let quiet = self.quiet
        let limits = self.limits.isEmpty ? "none" : self.limits.map(\.spec).joined(separator: ", ")

        try await server.run { address in
            let port = address.port ?? self.port
            if let portFile { try Self.writeAtomically(String(port), to: portFile) }
            let host = address.protocol == .inet6 ? "[\(address.ipAddress ?? self.host)]" : (address.ipAddress ?? self.host)
            writeAll("mde-simulator listening on \(scheme)://\(host):\(port)\n", to: STDOUT_FILENO)
            if !quiet {
                writeAll("mde-simulator: limits \(limits); seed \(seed)\n", to: STDERR_FILENO)
            }
        }
        if let portFile { unlink(portFile) }
    }

    /// Readers poll for the port file; writing a temporary file and renaming it means they never
    /// see it empty or half written.
    private static func writeAtomically(_ text: String, to path: String) throws {
        let temporary = "\(path).\(getpid()).tmp"
        let descriptor = open(temporary, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        guard descriptor >= 0 else { throw PortFileError(path: path, errno: errno) }
        writeAll(text, to: descriptor)
        close(descriptor)
        guard rename(temporary, path) == 0 else {
            let code = errno
            unlink(temporary)
            throw PortFileError(path: path, errno: code)
        }
    }

    @Sendable private static func limit(_ text: String) throws -> Limit {
        guard let limit = Limit(spec: text) else {
            throw ValidationError("'\(text)' is not a limit: write N/duration, e.g. 5/1s, 100/1m or 1500/1h.")
        }
        return limit
    }

    @Sendable private static func duration(_ text: String) throws -> Duration {
        if text == "0" { return .zero }
        guard let duration = Duration(configString: text) else {
            throw ValidationError("'\(text)' is not a duration: write a number and a unit, e.g. 250ms, 1.5s, 1m.")
        }
        return duration
    }
}

/// The port file could not be written; the message names the flag, the path and the reason.
struct PortFileError: Error, CustomStringConvertible {
    var path: String
    var errno: Int32

    var description: String {
        "--port-file \(self.path): cannot write it (\(String(cString: strerror(self.errno)))); check that its directory exists and is writable."
    }
}
