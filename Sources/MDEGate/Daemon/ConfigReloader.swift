import Logging
import MDEGateConfig
import MDEGateTransport
import ServiceLifecycle
import Synchronization
import UnixSignals

/// Reloads the configuration on SIGHUP (`systemctl reload mdegate`), keeping queue and ledger.
///
/// A new file is checked in full before anything changes: an invalid one is refused, logged with
/// the keys that are wrong, and the running configuration stays. Limits, guard, retries, queue
/// bound, upstream (a new transport), auth (a new token source) and log level apply at once;
/// unchanged upstream and auth settings keep their transport and token. `socket.*` and
/// `state.path` keep their values until a restart, and the log says so.
struct ConfigReloader: Service {
    /// Created before anything else runs: a SIGHUP that arrives before the handler exists would
    /// end the process (the signal's default action).
    let signals: UnixSignalsSequence
    let configPath: String
    let gateway: Gateway
    let notifier: SystemdNotifier
    let logger: Logger
    let running: Running
    let logLevel: LogLevelSwitch

    /// What the reloader replaced last: the configuration in force and its transport, whose
    /// owner (the daemon) shuts it down at exit.
    final class Running: Sendable {
        let state: Mutex<(configuration: GatewayConfiguration, transport: CurlTransport, tokens: any TokenSource)>
        init(configuration: GatewayConfiguration, transport: CurlTransport, tokens: any TokenSource) {
            state = Mutex((configuration, transport, tokens))
        }
        var transport: CurlTransport { state.withLock { $0.transport } }
    }

    func run() async throws {
        for await _ in signals.cancelOnGracefulShutdown() {
            await notifier.reloading(status: { await gateway.status().systemdStatus }) {
                await reload()
            }
        }
    }

    private func reload() async {
        logger.notice("SIGHUP: reloading the configuration", metadata: ["config": "\(configPath)"])
        let loaded: LoadedConfiguration
        do {
            loaded = try GatewayConfiguration.load(path: configPath)
        } catch {
            logger.error(
                "the new configuration is invalid and was refused; the running one stays",
                metadata: ["config": "\(configPath)", "problems": "\(error)"])
            return
        }
        for warning in loaded.warnings {
            logger.warning("configuration: \(warning)", metadata: ["config": "\(configPath)"])
        }
        let (old, oldTransport, oldTokens) = running.state.withLock { ($0.configuration, $0.transport, $0.tokens) }
        let (configuration, needsRestart) = old.applyingReload(loaded.configuration)
        for key in needsRestart {
            logger.warning("\(key.rawValue) changed; it keeps its old value until a restart")
        }
        // Unchanged upstream and auth settings keep their transport and token source: a reload
        // for the log level or the limits must not drop a valid token (and, during a login
        // outage, stop all dispatch until a new one can be had).
        let transport: CurlTransport
        if configuration.upstream == old.upstream {
            transport = oldTransport
        } else {
            do {
                transport = try CurlTransport(configuration: .init(configuration.upstream), logger: Logger(label: "mdegate.transport"))
            } catch {
                logger.error(
                    "the new upstream settings were refused; the running configuration stays",
                    metadata: ["problem": "\(error)"])
                return
            }
        }
        let tokens: any TokenSource
        if configuration.auth == old.auth, transport === oldTransport {
            tokens = oldTokens
        } else {
            do {
                tokens = try configuration.auth.makeTokenSource(
                    transport: transport, logger: Logger(label: "mdegate.auth"), metrics: gateway.metrics)
            } catch {
                if transport !== oldTransport { transport.shutdown() }
                logger.error(
                    "the new auth settings were refused; the running configuration stays",
                    metadata: ["problem": "\(error)"])
                return
            }
        }
        do {
            try await gateway.reconfigure(
                settings: Gateway.Settings(configuration),
                upstream: CurlUpstream(transport: transport, baseURL: configuration.upstream.baseURL),
                tokens: tokens)
        } catch {
            if transport !== oldTransport { transport.shutdown() }
            logger.error(
                "the new limits need the attempts of a longer window, which could not be read; the running configuration stays",
                metadata: ["problem": "\(error)"])
            return
        }
        // Attempts still in flight on the old transport hold their own reference to it; its
        // thread ends once they are done and it is released.
        running.state.withLock { $0 = (configuration, transport, tokens) }
        if configuration.log.level != old.log.level {
            logLevel.level = configuration.log.level
            logger.notice("log.level is now \(configuration.log.level.rawValue)")
        }
    }
}

extension CurlTransport.Configuration {
    init(_ upstream: GatewayConfiguration.Upstream) {
        self.init(
            connectTimeout: upstream.connectTimeout,
            requestTimeout: upstream.requestTimeout,
            maxConcurrency: upstream.maxConcurrency,
            caFile: upstream.caFile,
            proxy: upstream.proxy)
    }
}
