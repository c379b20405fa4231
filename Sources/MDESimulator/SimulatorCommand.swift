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
            Serves the machine-action APIs (API names in brackets) over HTTP/1.1 (HTTPS with \
            --tls-certificate and --tls-key): \
            POST /api/machineactions/{id}/cancel {"Comment"} [cancel], \
            GET /api/machineactions/{id} [get_machine_action], \
            GET /api/machineactions?$filter=&$top=&$skip= [list_machine_actions], and on \
            /api/machines/{machineId}/: POST isolate {"Comment","IsolationType"} [isolate], \
            unisolate [unisolate], runAntiVirusScan {"Comment","ScanType"} [run_antivirus_scan], \
            collectInvestigationPackage [collect_investigation_package], restrictCodeExecution \
            [restrict_code_execution], unrestrictCodeExecution [unrestrict_code_execution], \
            StopAndQuarantineFile {"Comment","Sha1"} [stop_and_quarantine_file]; the POSTs on a \
            machine answer 201 with a new MachineAction. Also POST /{tenant}/oauth2/v2.0/token, and \
            test endpoints: GET /_sim/stats, GET|POST /_sim/faults, POST /_sim/reset \
            (?actions=forget also forgets created actions), POST /_sim/revoke-tokens. \
            Prints "mde-simulator listening on http://HOST:PORT" (https://...) once ready.

            Each API has its own limits: --limit for every API, --api-limits for one. Every arrival \
            counts against its API's limits, also ones answered 401, 400, 429 or 5xx. An arrival is \
            a violation (answered 429) when N or more earlier arrivals of its API lie within the \
            last W of some limit N/W.

            Created actions are Pending for the first half of --action-duration, then InProgress, \
            then Succeeded; a cancel while Pending or InProgress makes them Cancelled, later it is \
            answered 400. A second action of the same type on a machine (for quarantine: of the same \
            file) while one is Pending or InProgress is answered 400 ActiveRequestAlreadyExists \
            (unless --allow-duplicate-actions). \
            Machine ids are 40 hex digits; those starting with 00000000 are not found (404). A cancel \
            of an id the simulator did not create answers 200 Cancelled, or 404 when the id starts \
            with 00000000; a get of such an id answers 404.

            The token endpoint grants client_credentials with --client-secret, or, for each \
            --client-certificate, with a client assertion (client_assertion_type \
            urn:ietf:params:oauth:client-assertion-type:jwt-bearer): an RS256 JWT whose header names \
            the certificate by x5t#S256 (or x5t) and whose claims are aud = the token URL as sent \
            (scheme://Host/path), iss = sub = the client id, exp in the future and at most 1 h \
            ahead, nbf not in the future, and a jti never presented before.

            POST /_sim/faults takes any of: apis (API names the API faults apply to; null: every \
            API), fail500Rate, fail503Rate, dropRate, delayMs, failFirst, \
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

    @Option(
        name: .customLong("api-limits"),
        help: ArgumentHelp(
            "Limits for one API instead of --limit, e.g. isolate=2/1s,10/1m, or NAME=none for unlimited; repeatable, once per API. Names: \(SimulatedAPI.names.joined(separator: ", ")).",
            valueName: "name=N/duration[,N/duration...]"),
        transform: SimulatorCommand.apiLimits
    )
    var apiLimits: [APILimits] = []

    @Option(
        help: ArgumentHelp("How long a created machine action takes to succeed (InProgress from half of it), e.g. 200ms or 5m. (default: 60s)", valueName: "duration"),
        transform: SimulatorCommand.duration
    )
    var actionDuration: Duration = .seconds(60)

    @Option(help: "At most this many created machine actions are kept; the oldest are forgotten.")
    var maxActions = 100_000

    @Flag(help: "Create a second action of a type on a machine while the first is Pending or InProgress, instead of answering 400 ActiveRequestAlreadyExists.")
    var allowDuplicateActions = false

    @Option(help: "The Retry-After seconds sent with limit violations.")
    var retryAfter = 1

    @Option(
        help: ArgumentHelp("Inject the faults below (and those set through /_sim/faults) only into these APIs; default: every API.", valueName: "name[,name...]")
    )
    var faultApis: String?

    @Option(name: .customLong("fail-500-rate"), help: "Fraction (0...1) of API requests answered 500.")
    var fail500Rate = 0.0

    @Option(name: .customLong("fail-503-rate"), help: "Fraction (0...1) of API requests answered 503.")
    var fail503Rate = 0.0

    @Option(help: "Fraction (0...1) of API requests read and then closed without an answer.")
    var dropRate = 0.0

    @Option(
        help: ArgumentHelp("Hold every API answer this long, e.g. 250ms or 1.5s.", valueName: "duration"),
        transform: SimulatorCommand.duration
    )
    var delay: Duration?

    @Option(help: "The first K attempts of each API for each id (machine action or machine) get 503.")
    var failFirst = 0

    @Option(help: "Seed for the injected faults' randomness (default: random, logged at start).")
    var seed: UInt64?

    @Flag(help: "Do not log requests to stderr.")
    var quiet = false

    func validate() throws {
        guard (0...65535).contains(self.port) else { throw ValidationError("--port must be 0...65535.") }
        guard self.tokenLifetime > 0 else { throw ValidationError("--token-lifetime must be positive.") }
        guard self.retryAfter >= 0 else { throw ValidationError("--retry-after must not be negative.") }
        guard self.maxActions > 0 else { throw ValidationError("--max-actions must be positive.") }
        var named: Set<String> = []
        for entry in self.apiLimits where !named.insert(entry.api).inserted {
            throw ValidationError(
                "--api-limits names \(entry.api) twice; give all its limits at once, e.g. \(entry.api)=2/1s,10/1m.")
        }
        guard (self.tlsCertificate == nil) == (self.tlsKey == nil) else {
            throw ValidationError("--tls-certificate and --tls-key go together: give both to serve HTTPS, or neither for plain HTTP.")
        }
        if let problem = self.faults.validationError() {
            let flag = problem
                .replacingOccurrences(of: "fail500Rate", with: "--fail-500-rate")
                .replacingOccurrences(of: "fail503Rate", with: "--fail-503-rate")
                .replacingOccurrences(of: "dropRate", with: "--drop-rate")
                .replacingOccurrences(of: "failFirst", with: "--fail-first")
                .replacingOccurrences(of: "apis must name at least one API (or be null for every API)", with: "--fault-apis must name at least one API")
                .replacingOccurrences(of: "apis: ", with: "--fault-apis: ")
            throw ValidationError(flag.hasSuffix(".") ? flag : flag + ".")
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
        plan.apis = self.faultApis.map { text in
            Set(text.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty })
        }
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
            apiLimits: Dictionary(self.apiLimits.map { ($0.api, $0.limits) }, uniquingKeysWith: { first, _ in first }),
            actionDuration: .nanoseconds(self.actionDuration.nanoseconds),
            maxActions: self.maxActions,
            allowDuplicateActions: self.allowDuplicateActions,
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
        var limits = self.limits.isEmpty ? "none" : self.limits.map(\.spec).joined(separator: ", ")
        for entry in self.apiLimits {
            limits += "; \(entry.api): " + (entry.limits.isEmpty ? "none" : entry.limits.map(\.spec).joined(separator: ", "))
        }

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

    /// `NAME=SPEC[,SPEC...]` or `NAME=none`.
    @Sendable private static func apiLimits(_ text: String) throws -> APILimits {
        let parts = text.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
        guard parts.count == 2 else {
            throw ValidationError("write NAME=N/duration[,N/duration...], e.g. isolate=2/1s,10/1m.")
        }
        let name = String(parts[0]).trimmingCharacters(in: .whitespaces)
        guard SimulatedAPI.named(name) != nil else {
            throw ValidationError(SimulatedAPI.unknownNameMessage(name))
        }
        if parts[1].trimmingCharacters(in: .whitespaces) == "none" { return APILimits(api: name, limits: []) }
        let limits = try parts[1].split(separator: ",", omittingEmptySubsequences: false).map { spec in
            let spec = spec.trimmingCharacters(in: .whitespaces)
            guard let limit = Limit(spec: spec) else {
                throw ValidationError(
                    "'\(spec)' is not a limit: write N/duration, e.g. 5/1s, 100/1m or 1500/1h (or none).")
            }
            return limit
        }
        return APILimits(api: name, limits: limits)
    }

    @Sendable private static func duration(_ text: String) throws -> Duration {
        if text == "0" { return .zero }
        guard let duration = Duration(configString: text) else {
            throw ValidationError("'\(text)' is not a duration: write a number and a unit, e.g. 250ms, 1.5s, 1m.")
        }
        return duration
    }
}

/// One `--api-limits` value: an API's own limits (empty: unlimited).
struct APILimits: Sendable {
    var api: String
    var limits: [Limit]
}

/// The port file could not be written; the message names the flag, the path and the reason.
struct PortFileError: Error, CustomStringConvertible {
    var path: String
    var errno: Int32

    var description: String {
        "--port-file \(self.path): cannot write it (\(String(cString: strerror(self.errno)))); check that its directory exists and is writable."
    }
}
