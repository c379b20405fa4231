import ArgumentParser
import Foundation
import MDEGate
import MDEGateClient
import Logging
import MDEGateConfig
import MDEGateSharedQuota
import MDEGateTransport
import MDEGateWire

/// Exit codes a script can rely on.
enum ExitStatus {
    /// The gateway answered, but not with a 2xx (the answer is printed).
    static let refused = ExitCode(1)
    /// The gateway could not be reached (no socket, permission denied, not running).
    static let unreachable = ExitCode(3)
}

@main
struct Mdegate: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "mdegate",
        abstract: "A local gateway that spends a Microsoft Defender for Endpoint API quota exactly.",
        discussion: """
            The machine-action commands send Microsoft's call through the gateway, which spends each \
            API's quota exactly and queues what does not fit; by default they wait for the upstream's \
            answer and print it as JSON. With --async they return at once with 202 and the request \
            record; with --wait N, after N seconds at most.

            Exit codes: 0 success (a 2xx answer), 1 the gateway answered with an error, 3 the gateway \
            could not be reached, 64 bad usage (checked before the gateway is called).
            """,
        groupedSubcommands: [
            CommandGroup(
                name: "Machine actions",
                subcommands: [
                    Cancel.self, Isolate.self, Unisolate.self, Scan.self, Collect.self, Restrict.self, Unrestrict.self,
                    Quarantine.self, Action.self, Actions.self,
                ]),
            CommandGroup(
                name: "Gateway", subcommands: [Status.self, Request.self, Requests.self, Serve.self, CheckConfig.self]),
        ])
}

struct SocketOption: ParsableArguments {
    @Option(
        name: .long,
        help: ArgumentHelp(
            "The gateway's Unix socket (default: $MDEGATE_SOCKET, else /run/mdegate/mdegate.sock).", valueName: "path"))
    var socket: String?

    var path: String { GatewayClient.socketPath(option: socket) }
}

struct Serve: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Run the gateway in the foreground.")

    @Option(name: .long, help: "The configuration file.")
    var config: String = GatewayConfiguration.defaultPath

    func run() async throws {
        do {
            try await Daemon.run(configPath: config)
        } catch {
            FileHandle.standardError.write(Data("mdegate: \(error)\n".utf8))
            throw ExitCode(1)
        }
    }
}

struct Status: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Show each API's quota use, next free slots, pause and queue, the last hour's attempts per minute, the queue per client, and upstream and token state.")

    @Flag(name: .long, help: "Print the JSON status document.")
    var json = false

    @Flag(name: .long, help: "Redraw every second until Ctrl-C.")
    var watch = false

    @OptionGroup var socket: SocketOption

    func validate() throws {
        if watch, json { throw ValidationError("--watch redraws the table; --json prints the document once") }
    }

    func run() async throws {
        guard watch else {
            let response = try await withGateway(socket.path) { try await $0.send("GET", "/v1/status") }
            guard !json, response.status == 200,
                let status = try? JSON.decoder.decode(StatusDocument.self, from: Data(response.body))
            else { return try printAnswer(response) }
            print(Rendering.status(status))
            return
        }
        // Like watch(1): home, clear, the frame; a gateway that is away is said on the screen and
        // asked again a second later.
        let client = try GatewayClient(socketPath: socket.path)
        defer { client.shutdown() }
        while true {
            var frame: String
            do {
                let response = try await client.send("GET", "/v1/status")
                if response.status == 200, let status = try? JSON.decoder.decode(StatusDocument.self, from: Data(response.body)) {
                    frame = Rendering.status(status)
                } else {
                    frame = "the gateway answered \(response.status): \(String(decoding: response.body, as: UTF8.self))"
                }
            } catch {
                frame = "cannot reach the gateway at \(socket.path): \((error as? TransportError)?.message ?? "\(error)")"
            }
            let clock = Date().formatted(Date.ISO8601FormatStyle())
            FileHandle.standardOutput.write(Data("\u{1B}[H\u{1B}[2J\(frame)\n\nevery 1 s, \(clock); Ctrl-C to stop\n".utf8))
            try await Task.sleep(for: .seconds(1))
        }
    }
}

struct Request: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Show a request record: the API, its target and options, the comment, the state and the upstream's answer.")

    @Argument(help: "The request id (Mdegate-Request-Id).")
    var id: String

    @Flag(name: .long, help: "Print the JSON request record.")
    var json = false

    @OptionGroup var socket: SocketOption

    func run() async throws {
        let path = "/v1/requests/\(GatewayClient.encodedSegment(id))"
        let response = try await withGateway(socket.path) { try await $0.send("GET", path) }
        guard !json, response.status == 200 else { return try printAnswer(response) }
        print(Rendering.record(JSONValue(parsingOrQuoting: response.body)))
    }
}

struct Requests: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "The audit listing: who asked for what and how it ended, newest first.",
        discussion: """
            Lists the request records the gateway keeps (finished ones for state.retention, 24h by \
            default): time, client, uid and pid, API, target, state, upstream status, attempts and \
            time in the queue. Filters combine. --since and --until take an ISO 8601 time \
            (2026-12-03T04:00:00Z) or a duration ago (30m, 24h). When more records match than \
            --limit, the last line gives the --cursor of the next page.
            """)

    @Option(name: .long, help: ArgumentHelp("Only this Mdegate-Client name.", valueName: "name"))
    var client: String?

    @Option(name: .long, help: "Only this Unix user id.")
    var uid: UInt32?

    @Option(name: .long, help: ArgumentHelp("Only these states: queued, sending, done, failed, withdrawn (comma-separated).", valueName: "states"))
    var state: String?

    @Option(name: .long, help: ArgumentHelp("Only this upstream API (cancel, isolate, …).", valueName: "api"))
    var api: String?

    @Option(name: .customLong("machine-action"), help: ArgumentHelp("Only this machine action id.", valueName: "id"))
    var machineAction: String?

    @Option(name: .long, help: ArgumentHelp("Only this target (a machine id, say).", valueName: "id"))
    var target: String?

    @Option(name: .long, help: ArgumentHelp("Created at or after: ISO 8601, or a duration ago (1h).", valueName: "time"))
    var since: String?

    @Option(name: .long, help: ArgumentHelp("Created before: ISO 8601, or a duration ago.", valueName: "time"))
    var until: String?

    @Option(name: .long, help: "At most this many records (1–1000).")
    var limit: Int = 50

    @Option(name: .long, help: ArgumentHelp("Continue after the page that printed it.", valueName: "cursor"))
    var cursor: String?

    @Flag(name: .long, help: "Print the JSON listing ({\"requests\": [...], \"next\": ...}).")
    var json = false

    @OptionGroup var socket: SocketOption

    func run() async throws {
        let parameters: [(String, String?)] = [
            ("client", client), ("uid", uid.map(String.init)), ("state", state), ("api", api),
            ("machineActionId", machineAction), ("target", target), ("since", since), ("until", until),
            ("limit", String(limit)), ("cursor", cursor),
        ]
        let query = parameters.compactMap { name, value in value.map { "\(name)=\(GatewayClient.encodedSegment($0))" } }
        let path = "/v1/requests?" + query.joined(separator: "&")
        let response = try await withGateway(socket.path) { try await $0.send("GET", path) }
        guard !json, response.status == 200,
            let list = try? JSON.decoder.decode(RequestListDocument.self, from: Data(response.body))
        else { return try printAnswer(response) }
        print(Rendering.requests(list))
    }
}

struct CheckConfig: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "check-config",
        abstract: "Validate a configuration file and print the effective configuration.")

    @Option(name: .long, help: "The configuration file.")
    var config: String = GatewayConfiguration.defaultPath

    func run() async throws {
        // Outside systemd there is no credentials directory: check the rest of the file, and
        // say that the secret systemd will load (LoadCredential=) is not checked here.
        var environment = ProcessInfo.processInfo.environment
        let placeholder = "$CREDENTIALS_DIRECTORY"
        if environment["CREDENTIALS_DIRECTORY"]?.isEmpty ?? true { environment["CREDENTIALS_DIRECTORY"] = placeholder }
        let loaded: LoadedConfiguration
        do {
            loaded = try GatewayConfiguration.load(path: config, environment: environment)
        } catch {
            FileHandle.standardError.write(Data("\(config): invalid\n\(error)\n".utf8))
            throw ExitStatus.refused
        }
        var notes = loaded.warnings
        if loaded.configuration.auth.clientSecretFile?.hasPrefix(placeholder) == true {
            notes.append("the client secret comes from systemd (LoadCredential=client-secret:...) when the service starts; it is not checked here")
        } else {
            do {
                notes += try loaded.configuration.auth.checkCredentials()
            } catch {
                FileHandle.standardError.write(Data("\(config): invalid\n\(error)\n".utf8))
                throw ExitStatus.refused
            }
        }
        for note in notes {
            FileHandle.standardError.write(Data("warning: \(note)\n".utf8))
        }
        let shared = try await checkSharedQuota(loaded.configuration.sharedQuota)
        print("# \(config): valid")
        if let shared { print("# \(shared)") }
        print(loaded.configuration.renderedYAML())
    }
}

/// Connects to the shared quota's database, if one is configured, and says whether it is
/// reachable and its schema current; a database that cannot be used (unreachable, refused
/// password, untrusted certificate) exits with 1 and the reason, never the password.
func checkSharedQuota(_ settings: GatewayConfiguration.SharedQuota) async throws -> String? {
    let connection: SharedQuotaConnection
    do {
        guard let configured = try settings.connection() else { return nil }
        connection = configured
    } catch {
        FileHandle.standardError.write(Data("shared quota: \(error)\n".utf8))
        throw ExitStatus.refused
    }
    switch await connection.probe(logger: Logger(label: "mdegate.check-config")) {
    case .unreachable(let reason):
        FileHandle.standardError.write(
            Data("shared_quota.url: cannot use the shared quota database \(connection): \(reason)\n".utf8))
        throw ExitStatus.refused
    case .reachable(let version):
        let current = SharedQuotaSchema.currentVersion
        let schema: String =
            switch version {
            case nil: "mdegate's tables are not there yet; the daemon creates them on first use"
            case let version? where version == current: "schema version \(current) (current)"
            case let version? where version < current: "schema version \(version); the daemon upgrades it to \(current)"
            case let version?:
                FileHandle.standardError.write(
                    Data("shared_quota.url: the database \(connection) is at schema version \(version), newer than this mdegate knows (\(current)); upgrade mdegate\n".utf8))
                throw ExitStatus.refused
            }
        return "shared quota: \(connection) is reachable; \(schema); key \"\(settings.key)\", host \"\(settings.hostName)\""
    }
}

/// Runs one call against the gateway; a gateway that cannot be reached exits with 3.
func withGateway(_ socketPath: String, _ body: (GatewayClient) async throws -> TransportResponse) async throws -> TransportResponse {
    do {
        let client = try GatewayClient(socketPath: socketPath)
        defer { client.shutdown() }
        return try await body(client)
    } catch {
        let reason = (error as? TransportError)?.message ?? "\(error)"
        FileHandle.standardError.write(Data("mdegate: cannot reach the gateway at \(socketPath): \(reason)\n".utf8))
        throw ExitStatus.unreachable
    }
}

/// Prints the answer's body; exits 1 unless it was a 2xx.
func printAnswer(_ response: TransportResponse) throws {
    var text = String(decoding: response.body, as: UTF8.self)
    if !text.hasSuffix("\n") { text += "\n" }
    FileHandle.standardOutput.write(Data(text.utf8))
    guard (200..<300).contains(response.status) else { throw ExitStatus.refused }
}
