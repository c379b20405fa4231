import Foundation
import Logging
import MDEGateConfig
import MDEGateCore
import Testing

@Suite("Loading: file, defaults and environment")
struct LoadingTests {
    @Test("without a file, every key has the default that the README documents")
    func defaults() throws {
        let loaded = try load(nil)
        let configuration = loaded.configuration
        #expect(loaded.warnings.isEmpty)
        #expect(configuration.socket.path == "/run/mdegate/mdegate.sock")
        #expect(configuration.socket.mode == 0o660)
        #expect(configuration.state.path == "/var/lib/mdegate/state.sqlite")
        #expect(configuration.upstream.cloud == .commercial)
        #expect(configuration.upstream.baseURL == "https://api.securitycenter.microsoft.com")
        #expect(configuration.upstream.connectTimeout == .seconds(10))
        #expect(configuration.upstream.requestTimeout == .seconds(30))
        #expect(configuration.upstream.maxConcurrency == 8)
        #expect(configuration.upstream.caFile == nil)
        #expect(configuration.upstream.proxy == nil)
        #expect(configuration.auth.tokenFile == "/run/mdegate/token")
        #expect(configuration.auth.tokenURL == "https://login.microsoftonline.com/{tenant_id}/oauth2/v2.0/token")
        #expect(configuration.auth.scope == "https://api.securitycenter.microsoft.com/.default")
        #expect(configuration.quota.limits.map(\.spec) == ["100/1m", "1500/1h"])
        #expect(configuration.quota.guardBand == .milliseconds(250))
        #expect(configuration.retry.maxAttempts == 4)
        #expect(configuration.retry.initialBackoff == .seconds(1))
        #expect(configuration.retry.maxBackoff == .seconds(60))
        #expect(configuration.queue.maxPending == 100_000)
        #expect(configuration.log.level == .info)
        #expect(configuration == GatewayConfiguration(auth: .init(tokenFile: "/run/mdegate/token")))
    }

    @Test("a file that sets every key is read key by key")
    func fullFile() throws {
        let loaded = try load(
            """
            socket:
              path: /run/gw/gw.sock
              mode: "0600"
            state:
              path: /var/lib/gw/state.sqlite
            upstream:
              cloud: gcc-high
              base_url: https://eu.api.security.microsoft.com/
              connect_timeout: 2s
              request_timeout: 1.5m
              max_concurrency: 16
              ca_file: /etc/ssl/extra.pem
              proxy: http://proxy.example:3128
            auth:
              token_file: ""
              tenant_id: 11111111-2222-3333-4444-555555555555
              client_id: 2f8f1a6e-6c5b-4d3e-9a10-1b2c3d4e5f60
              client_secret_file: /etc/mdegate/secret
              client_certificate_file: ""
              client_key_file: ""
              token_url: https://login.example.test/{tenant_id}/token
              scope: https://custom/.default
            quota:
              limits: ["5/1s", "12/4s"]
              guard: 30ms
            retry:
              max_attempts: 2
              initial_backoff: 500ms
              max_backoff: 10s
            queue:
              max_pending: 5000
            log:
              level: debug
            """, environment: [:])
        #expect(loaded.warnings.isEmpty)
        let expected = GatewayConfiguration(
            socket: .init(path: "/run/gw/gw.sock", mode: 0o600),
            state: .init(path: "/var/lib/gw/state.sqlite"),
            upstream: .init(
                cloud: .gccHigh, baseURL: "https://eu.api.security.microsoft.com",
                connectTimeout: .seconds(2), requestTimeout: .seconds(90), maxConcurrency: 16,
                caFile: "/etc/ssl/extra.pem", proxy: "http://proxy.example:3128"),
            auth: .init(
                tenantID: "11111111-2222-3333-4444-555555555555",
                clientID: "2f8f1a6e-6c5b-4d3e-9a10-1b2c3d4e5f60",
                clientSecretFile: "/etc/mdegate/secret",
                tokenURL: "https://login.example.test/11111111-2222-3333-4444-555555555555/token",
                scope: "https://custom/.default"),
            quota: .init(limits: [Limit(spec: "5/1s")!, Limit(spec: "12/4s")!], guardBand: .milliseconds(30)),
            retry: .init(maxAttempts: 2, initialBackoff: .milliseconds(500), maxBackoff: .seconds(10)),
            queue: .init(maxPending: 5000),
            log: .init(level: .debug))
        #expect(loaded.configuration == expected)
        #expect(
            loaded.configuration.auth.method
                == .clientSecret(
                    tenantID: "11111111-2222-3333-4444-555555555555",
                    clientID: "2f8f1a6e-6c5b-4d3e-9a10-1b2c3d4e5f60", secretFile: "/etc/mdegate/secret"))
    }

    @Test("an empty file, or one whose every line is a comment, means all defaults")
    func emptyFile() throws {
        #expect(try load("").configuration == load(nil).configuration)
        #expect(try load("# nothing here yet\n\n   # indented comment\n").configuration == load(nil).configuration)
    }

    @Test("a section whose keys are all commented out is neither a typo nor an error")
    func emptySection() throws {
        let loaded = try load("auth:\n  # token_file: /run/token\nquota:\n  guard: 0s\n")
        #expect(loaded.warnings.isEmpty)
        #expect(loaded.configuration.quota.guardBand == .zero)
    }

    @Test("environment variables MDEGATE_<SECTION>_<KEY> override the file")
    func environmentOverrides() throws {
        let loaded = try load(
            """
            upstream:
              base_url: https://api.securitycenter.microsoft.com
              max_concurrency: 4
            quota:
              limits: ["100/1m"]
            log:
              level: warning
            """,
            environment: [
                "MDEGATE_AUTH_TOKEN_FILE": "/run/token",
                "MDEGATE_UPSTREAM_BASE_URL": "http://127.0.0.1:8787",
                "MDEGATE_UPSTREAM_MAX_CONCURRENCY": "3",
                "MDEGATE_QUOTA_LIMITS": "5/1s, 12/4s",
                "MDEGATE_QUOTA_GUARD": "30ms",
                "MDEGATE_LOG_LEVEL": "debug",
                "MDEGATE_SOCKET_MODE": "0600",
            ])
        let configuration = loaded.configuration
        #expect(configuration.upstream.baseURL == "http://127.0.0.1:8787")
        #expect(configuration.upstream.maxConcurrency == 3)
        #expect(configuration.quota.limits.map(\.spec) == ["5/1s", "12/4s"])
        #expect(configuration.quota.guardBand == .milliseconds(30))
        #expect(configuration.log.level == .debug)
        #expect(configuration.socket.mode == 0o600)
        #expect(loaded.warnings.isEmpty)
    }

    @Test("every key can be set by its variable MDEGATE_ + section + _ + key, uppercased")
    func everyKeyFromTheEnvironment() throws {
        #expect(ConfigurationKey.upstreamBaseURL.environmentName == "MDEGATE_UPSTREAM_BASE_URL")
        var values: [ConfigurationKey: String] = [
            .socketPath: "/a.sock", .socketMode: "0640", .statePath: "/b.sqlite", .stateRetention: "36h",
            .upstreamCloud: "dod",
            .upstreamBaseURL: "https://localhost:1", .upstreamConnectTimeout: "3s", .upstreamRequestTimeout: "4s",
            .upstreamMaxConcurrency: "5", .upstreamCAFile: "/c.pem", .upstreamProxy: "socks5h://p:1080",
            .authTokenFile: "", .authTenantID: "contoso.onmicrosoft.com",
            .authClientID: "2f8f1a6e-6c5b-4d3e-9a10-1b2c3d4e5f60", .authClientSecretFile: "",
            .authClientCertificateFile: "/d.pem", .authClientKeyFile: "/e.pem", .authTokenURL: "https://t/{tenant_id}",
            .authScope: "s", .quotaLimits: "7/7s", .quotaGuard: "7ms", .retryMaxAttempts: "7",
            .retryInitialBackoff: "7s", .retryMaxBackoff: "8s", .queueMaxPending: "9", .logLevel: "critical",
            .logFormat: "json", .sharedQuotaURL: "postgresql://gw@db.example:6543/ledger", .sharedQuotaPasswordFile: "/f.pw",
            .sharedQuotaCAFile: "/g.pem", .sharedQuotaKey: "k", .sharedQuotaHostName: "h",
            .metricsAddress: "[::1]:9469",
        ]
        for key in ConfigurationKey.apiOverrides { values[key] = "3/3s" }
        #expect(Set(values.keys) == Set(ConfigurationKey.allCases))
        let environment = Dictionary(uniqueKeysWithValues: values.map { ($0.key.environmentName, $0.value) })
        let loaded = try load("log:\n  level: debug\n", environment: environment)
        var expected = GatewayConfiguration(
            socket: .init(path: "/a.sock", mode: 0o640),
            state: .init(path: "/b.sqlite", retention: .seconds(36 * 3600)),
            upstream: .init(
                cloud: .dod, baseURL: "https://localhost:1", connectTimeout: .seconds(3),
                requestTimeout: .seconds(4), maxConcurrency: 5, caFile: "/c.pem", proxy: "socks5h://p:1080"),
            auth: .init(
                tenantID: "contoso.onmicrosoft.com", clientID: "2f8f1a6e-6c5b-4d3e-9a10-1b2c3d4e5f60",
                clientCertificateFile: "/d.pem", clientKeyFile: "/e.pem",
                tokenURL: "https://t/contoso.onmicrosoft.com", scope: "s"),
            quota: .init(limits: [Limit(calls: 7, window: .seconds(7))], guardBand: .milliseconds(7)),
            retry: .init(maxAttempts: 7, initialBackoff: .seconds(7), maxBackoff: .seconds(8)),
            queue: .init(maxPending: 9),
            log: .init(level: .critical, format: .json),
            metrics: .init(address: .init(host: "::1", port: 9469)))
        for key in ConfigurationKey.apiOverrides { expected.quota.apis[key.apiName!] = [Limit(calls: 3, window: .seconds(3))] }
        expected.sharedQuota.url = "postgresql://gw@db.example:6543/ledger"
        expected.sharedQuota.endpoint = .tcp(host: "db.example", port: 6543)
        expected.sharedQuota.username = "gw"
        expected.sharedQuota.database = "ledger"
        expected.sharedQuota.passwordFile = "/f.pw"
        expected.sharedQuota.caFile = "/g.pem"
        expected.sharedQuota.key = "k"
        expected.sharedQuota.hostName = "h"
        #expect(loaded.configuration == expected)
        #expect(loaded.warnings.isEmpty)
    }

    @Test("an empty variable clears the file's setting back to its default")
    func emptyVariableClears() throws {
        let loaded = try load(
            "upstream:\n  proxy: http://proxy.example:3128\nlog:\n  level: debug\n",
            environment: tokenFileOnly.merging(["MDEGATE_UPSTREAM_PROXY": "", "MDEGATE_LOG_LEVEL": ""]) { $1 })
        #expect(loaded.configuration.upstream.proxy == nil)
        #expect(loaded.configuration.log.level == .info)
    }

    @Test("relative paths resolve against the working directory and come back absolute")
    func relativePaths() throws {
        let loaded = try load(
            "socket:\n  path: run/mdegate.sock\nstate:\n  path: ./run/../run/state.sqlite\nauth:\n  token_file: run/token\n",
            environment: [:])
        #expect(loaded.configuration.socket.path == "/srv/run/mdegate.sock")
        #expect(loaded.configuration.state.path == "/srv/run/state.sqlite")
        #expect(loaded.configuration.auth.tokenFile == "/srv/run/token")
    }

    @Test("an unquoted octal mode is still read as octal")
    func unquotedMode() throws {
        #expect(try load("socket:\n  mode: 0660\n").configuration.socket.mode == 0o660)
        #expect(try load("socket:\n  mode: 660\n").configuration.socket.mode == 0o660)
        #expect(try load("socket:\n  mode: \"0777\"\n").configuration.socket.mode == 0o777)
    }

    @Test("a list may also be written as one comma-separated string")
    func listAsString() throws {
        let loaded = try load("quota:\n  limits: \"5/1s, 12/4s\"\n")
        #expect(loaded.configuration.quota.limits == [Limit(calls: 5, window: .seconds(1)), Limit(calls: 12, window: .seconds(4))])
    }

    @Test("a missing file is an error that names the path")
    func missingFile() throws {
        let error = #expect(throws: ConfigurationError.self) {
            try GatewayConfiguration.load(path: "/nonexistent/mdegate.yaml", environment: tokenFileOnly)
        }
        #expect(error?.description.contains("/nonexistent/mdegate.yaml") == true)
        #expect(error?.description.contains("does not exist") == true)
    }

    @Test("a file that is not YAML is an error naming the file and the parser's complaint")
    func invalidYAML() throws {
        let directory = try TemporaryDirectory()
        let path = try directory.write("quota:\n  limits: [\"100/1m\"\n  guard: 1s\n")
        let error = #expect(throws: ConfigurationError.self) {
            try GatewayConfiguration.load(path: path, environment: tokenFileOnly)
        }
        let message = error?.description ?? ""
        #expect(message.contains(path))
        #expect(message.contains("cannot be parsed"))
        // The parser's own words, with the line and column it stopped at.
        #expect(message.contains("did not find expected ',' or ']'"))
        #expect(message.contains("3:3"))

        let notMapping = try directory.write("- just\n- a list\n", to: "list.yaml")
        let error2 = #expect(throws: ConfigurationError.self) {
            try GatewayConfiguration.load(path: notMapping, environment: tokenFileOnly)
        }
        #expect(error2?.description.contains(notMapping) == true)
    }

    /// The repository's `config/` folder, found from this file's location.
    static let shippedConfigurations = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("config")

    @Test("the production example is valid, warns about nothing and documents the defaults")
    func productionExample() throws {
        let path = Self.shippedConfigurations.appendingPathComponent("mdegate.yaml").path
        let loaded = try GatewayConfiguration.load(path: path, environment: [:], workingDirectory: "/srv")
        #expect(loaded.warnings.isEmpty)
        #expect(loaded.configuration == GatewayConfiguration(auth: .init(tokenFile: "/var/lib/mdegate/token")))
    }

    @Test("the quick-start file points at the local simulator with paths under run/")
    func quickStartExample() throws {
        let path = Self.shippedConfigurations.appendingPathComponent("local.yaml").path
        let loaded = try GatewayConfiguration.load(path: path, environment: [:], workingDirectory: "/repo")
        #expect(loaded.warnings.isEmpty)
        var expected = GatewayConfiguration()
        expected.socket.path = "/repo/run/mdegate.sock"
        expected.state.path = "/repo/run/state.sqlite"
        expected.upstream.baseURL = "http://127.0.0.1:8787"
        expected.auth.tokenFile = "/repo/run/token"
        #expect(loaded.configuration == expected)
    }

    @Test("the default path is /etc/mdegate/config.yaml")
    func defaultPath() {
        #expect(GatewayConfiguration.defaultPath == "/etc/mdegate/config.yaml")
    }
}
