import ArgumentParser
import Dispatch
import Foundation
import MDEGateCore
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// `mdegate-bench`: measures the performance targets in docs/benchmarks.md against the real daemon and the real
/// simulator, and prints the figures for the docs. It reports; it never asserts.
struct Bench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "mdegate-bench",
        abstract: "Measure mdegate against the performance targets in docs/benchmarks.md (reports figures, never fails on a miss).",
        discussion: """
            Each scenario starts its own mde-simulator (127.0.0.1, a free port) and mdegate (a Unix \
            socket in a fresh /tmp/mdb.* directory) and stops both at the end. Prints one block of \
            figures with each target (docs/benchmarks.md) and "met" or "MISSED", then one JSON line.
            """,
        subcommands: [Burst.self, Sustained.self, SharedBurst.self, Admission.self, Latency.self, Auth.self],
        defaultSubcommand: Burst.self)
}

/// Options every scenario takes.
struct CommonOptions: ParsableArguments {
    @Option(help: "The directory holding mdegate and mde-simulator (default: this binary's directory).")
    var binDir: String?

    @Option(help: "Stop everything after this many seconds (default: generous for the scenario).")
    var timeout: Double?

    @Option(help: "The daemon's log.level.")
    var logLevel = "info"

    @Flag(help: "Keep the scratch directory (configuration, logs) instead of deleting it.")
    var keepTemp = false

    func validate() throws {
        if let timeout, !(timeout > 0) { throw ValidationError("--timeout must be a positive number of seconds") }
    }

    var binaryDirectory: String {
        if let binDir { return binDir }
        let invoked = CommandLine.arguments[0]
        if invoked.contains("/") { return URL(fileURLWithPath: invoked).deletingLastPathComponent().path }
        let resolved = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? invoked
        return URL(fileURLWithPath: resolved).deletingLastPathComponent().path
    }

    /// Runs one scenario under a watchdog and prints its report.
    func run(defaultTimeout: Double, _ scenario: @escaping @Sendable (Lab) async throws -> Report) async throws {
        signal(SIGPIPE, SIG_IGN)
        let children = Children()
        // Ctrl-C or a SIGTERM to the benchmark must not leave a daemon or simulator behind.
        let interrupts = ([SIGINT, SIGTERM, SIGHUP] as [Int32]).map { number in
            signal(number, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: number, queue: .global())
            source.setEventHandler {
                children.abandon()
                FileHandle.standardError.write(Data("mdegate-bench: interrupted; stopped the simulator and the daemon\n".utf8))
                Glibc.exit(130)
            }
            source.resume()
            return source
        }
        defer { interrupts.forEach { $0.cancel() } }

        let seconds = timeout ?? defaultTimeout
        let start = Now.monotonic()
        let environment = Environment(
            binDirectory: binaryDirectory, logLevel: logLevel,
            deadlineMonotonic: start + Int64(seconds * 1e9),
            softDeadlineMonotonic: start + Int64(max(seconds * 0.8, seconds - 30) * 1e9),
            children: children)
        let timedOut = Atomic<Bool>(false)
        let watchdog = Task {
            try await Task.sleep(for: .seconds(seconds))
            timedOut.store(true, ordering: .sequentiallyConsistent)
            children.signalAll(SIGKILL)
        }
        defer { watchdog.cancel() }

        do {
            let report = try await Lab.with(environment, keepWorkspace: keepTemp, scenario)
            report.printBlock()
            print(report.jsonLine)
        } catch {
            let reason = timedOut.load(ordering: .sequentiallyConsistent)
                ? "timed out after \(seconds) s (--timeout); last error: \(error)" : "\(error)"
            FileHandle.standardError.write(Data("mdegate-bench: \(reason)\n".utf8))
            print("{\"error\":\(Report.quoted(reason)),\"build\":\"\(buildConfiguration)\"}")
            throw ExitCode(1)
        }
    }
}

/// Options of `burst` and `sustained`; unset ones take the scenario's defaults.
struct QuotaOptions: ParsableArguments {
    @Option(help: "How many distinct synchronous cancels to send at once (burst: 36, sustained: 300).")
    var requests: Int?

    @Option(
        help: "The quota limits, comma-separated, for gateway and simulator alike (burst: 5/1s,12/4s; sustained: 100/1m,1500/1h).",
        transform: QuotaOptions.limits)
    var limits: [Limit]?

    @Option(name: .customLong("guard"), help: "The gateway's guard band (burst: 30ms, sustained: 250ms).", transform: QuotaOptions.duration)
    var guardBand: Duration?

    @Option(help: "Spread the requests over this many client names (Mdegate-Client).")
    var clients = 1

    @Option(help: "The gateway's upstream.max_concurrency.")
    var maxConcurrency = 8

    @Option(help: "Have the simulator hold each answer this long (e.g. 50ms), like a distant upstream.", transform: QuotaOptions.duration)
    var upstreamDelay: Duration?

    @Flag(help: "Poll GET /v1/status every 100 ms to sample the gateway's own attempt times (adds a little load).")
    var probeLedger = false

    @Option(help: "Write every upstream arrival with its ideal instant and lag to this CSV file.")
    var arrivalsCsv: String?

    @Option(
        help: ArgumentHelp(
            "Burst on these upstream APIs at once, --requests calls each, comma-separated (default: cancel). Each API's utilization, lag and violations are reported.",
            valueName: "api,api"),
        transform: QuotaOptions.apis)
    var apis: [BenchAPI] = [.cancel]

    func validate() throws {
        if let requests, !(1...10_000).contains(requests) {
            throw ValidationError("--requests must be 1...10000 (one thread and connection each)")
        }
        if let requests, requests * apis.count > 10_000 {
            throw ValidationError("--requests × the number of --apis must be at most 10000 (one thread and connection each)")
        }
        guard !apis.isEmpty, Set(apis).count == apis.count else { throw ValidationError("--apis must name each API once") }
        guard clients >= 1 else { throw ValidationError("--clients must be at least 1") }
        guard maxConcurrency >= 1 else { throw ValidationError("--max-concurrency must be at least 1") }
    }

    static func limits(_ text: String) throws -> [Limit] {
        let specs = text.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }
        guard !specs.isEmpty else { throw ValidationError("--limits needs at least one N/duration") }
        return try specs.map { spec in
            guard let limit = Limit(spec: spec) else { throw ValidationError("'\(spec)' is not a limit N/duration such as 5/1s") }
            return limit
        }
    }

    static func apis(_ text: String) throws -> [BenchAPI] {
        try text.split(separator: ",").map { name in
            guard let api = BenchAPI(rawValue: name.trimmingCharacters(in: .whitespaces)) else {
                throw ValidationError("'\(name)' is not an API; write one of \(BenchAPI.allCases.map(\.rawValue).joined(separator: ", "))")
            }
            return api
        }
    }

    static func duration(_ text: String) throws -> Duration {
        guard let duration = Duration(configString: text) else {
            throw ValidationError("'\(text)' is not a duration such as 30ms or 1s")
        }
        return duration
    }

    func scenario(
        name: String, requests defaultRequests: Int, limits defaultLimits: String, guardBand defaultGuard: Duration,
        utilizationTarget: Double, targetContext: String
    ) -> QuotaScenario {
        QuotaScenario(
            name: name, requests: requests ?? defaultRequests,
            limits: limits ?? defaultLimits.split(separator: ",").map { Limit(spec: String($0))! },
            guardBand: guardBand ?? defaultGuard, clients: clients, maxConcurrency: maxConcurrency,
            utilizationTarget: utilizationTarget, targetContext: targetContext, upstreamDelay: upstreamDelay, probeLedger: probeLedger,
            arrivalsCSV: arrivalsCsv, apis: apis)
    }
}

extension QuotaScenario {
    /// The optimal makespan, plus generous slack for start-up and lag.
    var defaultTimeout: Double {
        let slots = Ledger(limits: limits, guardBand: guardBand).projectedSlots(count: requests, notBefore: .zero)
        return 120 + 1.5 * (slots.last! - slots.first!).seconds
    }
}

struct Burst: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "N synchronous cancels at once at 5/1s + 12/4s, 30ms guard: utilization and dispatch lag (default).")

    @OptionGroup var quota: QuotaOptions
    @OptionGroup var common: CommonOptions

    func run() async throws {
        let scenario = quota.scenario(
            name: "burst", requests: 36, limits: "5/1s,12/4s", guardBand: .milliseconds(30),
            utilizationTarget: 0.97, targetContext: "at 5/1s + 12/4s, 30ms guard")
        try await common.run(defaultTimeout: scenario.defaultTimeout) { try await scenario.run(in: $0) }
    }
}

struct Sustained: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "N synchronous cancels at once at Microsoft's limits 100/1m + 1500/1h, 250ms guard (about 2 minutes for 300).")

    @OptionGroup var quota: QuotaOptions
    @OptionGroup var common: CommonOptions

    func run() async throws {
        let scenario = quota.scenario(
            name: "sustained", requests: 300, limits: "100/1m,1500/1h", guardBand: .milliseconds(250),
            utilizationTarget: 0.99, targetContext: "at 100/1m + 1500/1h")
        try await common.run(defaultTimeout: scenario.defaultTimeout) { try await scenario.run(in: $0) }
    }
}

struct SharedBurst: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "shared",
        abstract: "A burst over several gateways sharing one quota in PostgreSQL, next to the same burst on one gateway alone.",
        discussion: """
            Starts a throwaway PostgreSQL server (Debian's postgresql, a Unix socket in a /tmp/mdb-pg.* \
            directory), one strict simulator and --hosts gateways with the same shared_quota.url, and deals \
            the synchronous cancels over their sockets. Reports the combined utilization, violations, the \
            time a slot request to PostgreSQL takes, and first the same burst through one gateway without \
            a shared quota, in the same run.
            """)

    @Option(help: "How many gateways share the quota.")
    var hosts = 3

    @OptionGroup var quota: QuotaOptions
    @OptionGroup var common: CommonOptions

    func validate() throws {
        guard (2...16).contains(hosts) else { throw ValidationError("--hosts must be 2...16") }
    }

    func run() async throws {
        var shared = quota.scenario(
            name: "shared", requests: 36, limits: "5/1s,12/4s", guardBand: .milliseconds(30),
            utilizationTarget: 0.97, targetContext: "at 5/1s + 12/4s, 30ms guard")
        var single = shared
        single.name = "single"
        shared.hosts = hosts
        shared.sharedQuota = true
        let hosts = hosts
        let (alone, together) = (single, shared)
        try await common.run(defaultTimeout: 2 * shared.defaultTimeout) { lab in
            let baseline = try await alone.run(in: lab)
            await lab.tearDown(showLogs: false)
            var report = try await together.run(in: lab)
            report.title = "shared: \(hosts) gateways, one quota in PostgreSQL; \(report.title)"
            report.absorb(baseline, label: "one gateway alone: ", key: "single_")
            return report
        }
    }
}

struct Admission: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Async admissions per second and memory per queued request, with the upstream blocked.")

    @Option(help: "How many asynchronous cancels to submit.")
    var requests = 100_000

    @Option(help: "Concurrent connections submitting them.")
    var clients = 50

    @Flag(inversion: .prefixedNo, help: "Restart the daemon afterwards and measure start-up with the queue.")
    var restart = true

    @OptionGroup var common: CommonOptions

    func validate() throws {
        guard requests >= 1 else { throw ValidationError("--requests must be at least 1") }
        guard (1...1000).contains(clients) else { throw ValidationError("--clients must be 1...1000") }
    }

    func run() async throws {
        let scenario = AdmissionScenario(requests: requests, clients: clients, restart: restart)
        try await common.run(defaultTimeout: 300 + Double(requests) / 200) { try await scenario.run(in: $0) }
    }
}

struct Latency: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Latency a synchronous call through mdegate adds over calling the simulator directly, next to what nginx adds.",
        discussion: """
            Three paths, interleaved call by call: the simulator directly (loopback TCP), nginx proxy_pass \
            on a Unix socket to the simulator (the anchor: what a minimal proxy on a Unix socket adds; \
            Debian's nginx-light, started as a child with a configuration written into the scratch \
            directory), and mdegate. Without nginx the anchor is skipped and said so.
            """)

    @Option(help: "How many measured calls on each path.")
    var requests = 2000

    @Option(help: "Warm-up calls on each path, not measured.")
    var warmup = 100

    @Option(help: "The nginx executable for the anchor (default: nginx on PATH, or /usr/sbin/nginx).")
    var nginx: String?

    @OptionGroup var common: CommonOptions

    func validate() throws {
        guard requests >= 1, warmup >= 0 else { throw ValidationError("--requests must be at least 1, --warmup at least 0") }
        if let nginx, !FileManager.default.isExecutableFile(atPath: nginx) {
            throw ValidationError("--nginx \(nginx) is not an executable")
        }
    }

    func run() async throws {
        let scenario = LatencyScenario(requests: requests, warmup: warmup, nginx: nginx)
        try await common.run(defaultTimeout: 120 + Double(requests) / 50) { try await scenario.run(in: $0) }
    }
}

struct Auth: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "What a token refresh costs the call that triggers it, and a login outage: what waiting clients see.")

    @Option(help: "Rounds of (warm call, revoke tokens, call that meets the 401).")
    var rounds = 20

    @Option(help: "How long the token endpoint answers 503, in seconds (0 skips this part).")
    var outage = 60.0

    @Option(help: "Asynchronous cancels submitted during the outage.")
    var asyncRequests = 20

    @OptionGroup var common: CommonOptions

    func validate() throws {
        guard rounds >= 1, outage >= 0, asyncRequests >= 0 else {
            throw ValidationError("--rounds must be at least 1, --outage and --async-requests at least 0")
        }
    }

    func run() async throws {
        let scenario = AuthScenario(rounds: rounds, outageSeconds: outage, asyncRequests: asyncRequests)
        try await common.run(defaultTimeout: 120 + outage * 2) { try await scenario.run(in: $0) }
    }
}

/// What `AsyncParsableCommand.main()` does (a file named main.swift cannot use `@main`).
func runBench() async {
    do {
        var command = try Bench.parseAsRoot()
        if var asyncCommand = command as? AsyncParsableCommand {
            try await asyncCommand.run()
        } else {
            try command.run()
        }
    } catch {
        Bench.exit(withError: error)
    }
}

await runBench()
