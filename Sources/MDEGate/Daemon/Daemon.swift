import Foundation
import Logging
import MDEGateConfig
import MDEGateCore
import MDEGateSharedQuota
import MDEGateTransport
import NIOCore
import NIOPosix
import ServiceLifecycle
import UnixSignals

/// `mdegate serve`: wires configuration, transport, store, gateway and server together and runs
/// them until SIGTERM or SIGINT, telling systemd about it when systemd started it.
public enum Daemon {
    public static func run(configPath: String) async throws {
        // First, before a SIGHUP can arrive and end the process: its handler.
        let reloadSignals = await UnixSignalsSequence(trapping: .sighup)
        // Then, while no other thread reads the environment: a socket passed by systemd.
        let activatedDescriptor = SocketActivation.listenFD()
        let loaded = try GatewayConfiguration.load(path: configPath)
        let configuration = loaded.configuration
        let logLevel = LogLevelSwitch(configuration.log.level)
        LoggingSystem.bootstrap(
            logLevel.standardErrorHandler(
                format: LogLineFormat(json: configuration.log.format == .json, journal: LogLineFormat.stderrIsJournal())))
        let logger = Logger(label: "mdegate")
        for warning in loaded.warnings {
            logger.warning("configuration: \(warning)", metadata: ["config": "\(configPath)"])
        }

        let notifier = SystemdNotifier(logger: Logger(label: "mdegate.systemd"))
        let listener: LocalAPIServer.Listener
        if let activatedDescriptor {
            let socket = try ListeningSocket(adopting: activatedDescriptor)
            listener = .inherited(socket)
            logger.info(
                "serving the socket systemd passed in; socket.path and socket.mode are not used",
                metadata: ["socket": "\(socket)"])
        } else {
            listener = .path(configuration.socket.path, mode: configuration.socket.mode)
        }

        let transport = try CurlTransport(
            configuration: .init(configuration.upstream), logger: Logger(label: "mdegate.transport"))
        let metrics = GatewayMetrics()
        let tokens: any TokenSource
        do {
            tokens = try configuration.auth.makeTokenSource(
                transport: transport, logger: Logger(label: "mdegate.auth"), metrics: metrics)
        } catch {
            transport.shutdown()
            throw DaemonError("\(error)")
        }
        let running = ConfigReloader.Running(configuration: configuration, transport: transport, tokens: tokens)
        defer { running.transport.shutdown() }
        let store = try SQLiteStore(path: configuration.state.path, logger: Logger(label: "mdegate.store"))

        // The ledger shared with other hosts: its pool runs beside the gateway from the start,
        // so the first slot request finds it running. A database that cannot be reached does
        // not stop the start: the gateway admits requests and sends nothing until it answers.
        var sharedQuota: SharedQuotaLink?
        var sharedClientTask: Task<Void, Never>?
        if let connection = try configuration.sharedQuota.connection() {
            let sharedLogger = Logger(label: "mdegate.shared-quota")
            let client = try connection.makeClient(logger: sharedLogger)
            sharedClientTask = Task { await client.run() }
            let database = SharedQuotaDatabase(
                client: client, key: configuration.sharedQuota.key, host: configuration.sharedQuota.hostName,
                logger: sharedLogger)
            sharedQuota = SharedQuotaLink(database: database, connection: connection, logger: sharedLogger)
            logger.notice(
                "sharing the quota with other hosts",
                metadata: [
                    "database": "\(connection)", "key": "\(database.key)", "host": "\(database.host)",
                ])
        }
        defer { sharedClientTask?.cancel() }

        // One loop for the gateway and every connection of the socket: a request reaches the
        // gateway without a hop (docs/architecture.md).
        let gateway = Gateway(
            settings: Gateway.Settings(configuration),
            store: store,
            upstream: CurlUpstream(transport: transport, baseURL: configuration.upstream.baseURL),
            tokens: tokens,
            eventLoop: MultiThreadedEventLoopGroup.singleton.next(),
            logger: logger,
            sharedQuota: sharedQuota,
            metrics: metrics)
        // Bound before anything is dispatched, so a port in use stops the start cleanly.
        var metricsServer: MetricsServer?
        if let address = configuration.metrics.address {
            metricsServer = try await MetricsServer.bind(address, gateway: gateway, logger: Logger(label: "mdegate.metrics"))
        }
        try await gateway.start()

        let limits = configuration.quota.limits.map(\.spec).joined(separator: " + ")
        let server = LocalAPIServer(
            listener: listener,
            api: LocalAPI(gateway: gateway, logger: logger), logger: logger,
            onReady: {
                logger.notice(
                    "mdegate is ready",
                    metadata: [
                        "socket": "\(listener)", "upstream": "\(configuration.upstream.baseURL)",
                        "limits": "\(limits)", "guard": "\(configuration.quota.guardBand.configString)",
                    ])
                notifier.ready(status: "serving; \(await gateway.status().systemdStatus)")
            },
            onShutdown: { notifier.stopping() })
        // Shut down in reverse order: the server stops accepting and drains first, while the
        // heartbeat keeps the watchdog fed until it is done.
        var serviceList: [ServiceGroupConfiguration.ServiceConfiguration] = []
        if notifier.isEnabled {
            serviceList.append(.init(service: SystemdHeartbeat(notifier: notifier, gateway: gateway)))
        }
        serviceList.append(
            .init(
                service: ConfigReloader(
                    signals: reloadSignals, configPath: configPath, gateway: gateway, notifier: notifier,
                    logger: logger, running: running, logLevel: logLevel)))
        if let metricsServer { serviceList.append(.init(service: metricsServer)) }
        serviceList.append(.init(service: server))
        var serviceConfiguration = ServiceGroupConfiguration(
            services: serviceList,
            gracefulShutdownSignals: [.sigterm, .sigint],
            logger: logger)
        // Bounded: a caller still waiting for a queued request must not hold up a stop forever.
        serviceConfiguration.maximumGracefulShutdownDuration = .seconds(10)
        serviceConfiguration.maximumCancellationDuration = .seconds(2)
        let services = ServiceGroup(configuration: serviceConfiguration)
        try await services.run()
        do {
            try await gateway.drain().get()
        } catch {
            logger.error("could not store the last changes before stopping", metadata: ["error": "\(error)"])
        }
        try? await store.close()
        // The pool closes its connections when cancelled; waiting for that (2 s at most) keeps
        // them from being cut by the exit: the server sees a goodbye, not a reset.
        if let sharedClientTask {
            sharedClientTask.cancel()
            _ = await withDeadline(.seconds(2)) { await sharedClientTask.value }
        }
        logger.notice("mdegate stopped")
    }
}

extension Gateway.Settings {
    init(_ configuration: GatewayConfiguration) {
        self.init(
            limits: configuration.quota.limits,
            guardBand: configuration.quota.guardBand,
            retryPolicy: RetryPolicy(
                maxAttempts: configuration.retry.maxAttempts,
                initialBackoff: configuration.retry.initialBackoff,
                maxBackoff: configuration.retry.maxBackoff),
            maxConcurrency: configuration.upstream.maxConcurrency,
            maxPending: configuration.queue.maxPending)
        retention = configuration.state.retention
        apiLimits = Dictionary(uniqueKeysWithValues: configuration.quota.apis.map { (UpstreamAPI($0.key), $0.value) })
    }
}
