import Configuration
import Foundation
import Logging
import MDEGateCore

/// A validated configuration and what the operator should hear about it without it being fatal.
public struct LoadedConfiguration: Sendable, Equatable {
    public var configuration: GatewayConfiguration
    /// Unknown keys and environment variables (with the likely intended key) and suspicious
    /// combinations. The daemon logs them; `check-config` prints them. They never echo values,
    /// so a secret put in the wrong variable does not end up in a log.
    public var warnings: [String]

    public init(configuration: GatewayConfiguration, warnings: [String]) {
        self.configuration = configuration
        self.warnings = warnings
    }
}

extension GatewayConfiguration {
    /// Reads the YAML file at `path` (nil: defaults only), applies `MDEGATE_…` environment
    /// overrides and validates the result.
    ///
    /// Every key `section.name` can be overridden by `MDEGATE_SECTION_NAME` (uppercased; e.g.
    /// `MDEGATE_UPSTREAM_BASE_URL`, `MDEGATE_QUOTA_LIMITS="5/1s,12/4s"` with commas for the
    /// list). The environment wins over the file; an empty value means unset, so an empty
    /// variable clears a file's setting back to its default.
    ///
    /// Relative paths (`socket.path`, `state.path`, `auth.*_file`, `upstream.ca_file`) are
    /// resolved against `workingDirectory`, the current directory as for any command-line tool,
    /// and returned absolute, so what `check-config` prints is exactly what the daemon opens.
    ///
    /// - Throws: ``ConfigurationError`` listing every problem, each naming its key.
    public static func load(
        path: String?,
        environment: [String: String] = ProcessInfo.processInfo.environment,
        workingDirectory: String = FileManager.default.currentDirectoryPath
    ) throws -> LoadedConfiguration {
        // The key `upstream.base_url` becomes `mdegate.upstream.base_url`, which the provider
        // spells MDEGATE_UPSTREAM_BASE_URL (see ConfigurationKey.environmentName).
        let environmentProvider = EnvironmentVariablesProvider(
            environmentVariables: environment,
            secretsSpecifier: .specific([ConfigurationKey.upstreamProxy.environmentName])
        ).prefixKeys(with: ConfigKey(["mdegate"]))
        var providers: [any ConfigProvider] = [environmentProvider]
        var warnings: [String] = []
        if let path {
            let file = try ConfigurationFile(path: path)
            providers.append(file)
            warnings += unknownKeyWarnings(in: file)
        }
        warnings += unknownVariableWarnings(in: environment)

        var settings = SettingsReader(
            reader: ConfigReader(providers: providers),
            environment: environment,
            workingDirectory: workingDirectory)
        let configuration = settings.read()
        guard settings.problems.isEmpty else { throw ConfigurationError(problems: settings.problems) }
        return LoadedConfiguration(configuration: configuration, warnings: warnings + settings.warnings)
    }

    private static func unknownKeyWarnings(in file: ConfigurationFile) -> [String] {
        let known = Set(ConfigurationKey.allCases.map(\.rawValue))
        var warnings: [String] = []
        for key in file.keys where !known.contains(key) {
            if ConfigurationKey.sections.contains(key) {
                if file.emptyKeys.contains(key) { continue }
                let example = ConfigurationKey.allCases.first { $0.section == key }!.rawValue
                warnings.append("key '\(key)' is a section and needs keys under it, such as '\(example)'; its value is ignored")
                continue
            }
            let suggestion = KeySuggestion.closest(to: key, separator: ".", spelling: \.rawValue)
            warnings.append("unknown key '\(key)' " + (suggestion.map { "(did you mean '\($0)'?)" } ?? "(ignored)"))
        }
        return warnings
    }

    private static func unknownVariableWarnings(in environment: [String: String]) -> [String] {
        let known = Set(ConfigurationKey.allCases.map(\.environmentName))
            .union(ConfigurationKey.otherEnvironmentNames)
        return environment.keys.sorted()
            .filter { $0.hasPrefix(ConfigurationKey.environmentPrefix) && !known.contains($0) }
            .map { name in
                let suggestion = KeySuggestion.closest(to: name, separator: "_") { $0.environmentName }
                return "unknown environment variable '\(name)' "
                    + (suggestion.map { "(did you mean '\($0)'?)" } ?? "(ignored)")
            }
    }
}

/// Reads each key through swift-configuration (environment first, then the file), converts
/// and checks it, and collects every problem instead of stopping at the first.
///
/// The library's optional accessors return nil both for "absent" and for "present but of the
/// wrong shape" (a list where one value belongs). Every accessor here therefore asks again in
/// the other shape when the first answer is nil, so a value is never dropped without a word.
struct SettingsReader {
    let reader: ConfigReader
    let environment: [String: String]
    let workingDirectory: String
    private(set) var problems: [ConfigurationError.Problem] = []
    private(set) var warnings: [String] = []

    init(reader: ConfigReader, environment: [String: String], workingDirectory: String) {
        self.reader = reader
        self.environment = environment
        self.workingDirectory = workingDirectory
    }

    // MARK: The whole configuration

    mutating func read() -> GatewayConfiguration {
        var configuration = GatewayConfiguration()
        readSocketAndState(into: &configuration)
        readUpstream(into: &configuration)
        readAuth(into: &configuration)
        readQuota(into: &configuration)
        readRetryQueueAndLog(into: &configuration)
        readSharedQuota(into: &configuration)
        return configuration
    }

    private mutating func readSocketAndState(into configuration: inout GatewayConfiguration) {
        if let path = path(.socketPath) {
            // sockaddr_un.sun_path holds 108 bytes including the terminating NUL.
            if path.utf8.count > 107 {
                fail(.socketPath, "\(quoted(path)) is \(path.utf8.count) bytes long, but a Unix socket path can have at most 107; choose a shorter path")
            } else {
                configuration.socket.path = path
            }
        }
        if let text = text(.socketMode) {
            if let mode = Self.fileMode(text) {
                configuration.socket.mode = mode
            } else {
                fail(.socketMode, "\(quoted(text)) is not a file mode; write octal digits from \"0000\" to \"0777\", such as \"0660\" (owner and group may connect)")
            }
        }
        if let path = path(.statePath) { configuration.state.path = path }
        if let retention = duration(.stateRetention, mayBeZero: false) { configuration.state.retention = retention }
    }

    private mutating func readUpstream(into configuration: inout GatewayConfiguration) {
        var upstream = GatewayConfiguration.Upstream()
        if let text = text(.upstreamCloud) {
            if let cloud = Cloud(rawValue: text.lowercased()) {
                upstream.cloud = cloud
            } else {
                fail(.upstreamCloud, "\(quoted(text)) is not a cloud; write one of \(Cloud.allCases.map(\.rawValue).joined(separator: ", "))")
            }
        }
        upstream.baseURL = upstream.cloud.baseURL
        if let text = text(.upstreamBaseURL), let url = httpURL(.upstreamBaseURL, text, example: Cloud.commercial.baseURL) {
            upstream.baseURL = url
            if let other = Cloud.allCases.first(where: { $0.baseURL == url }), other.baseURL != upstream.cloud.baseURL {
                warnings.append(
                    "upstream.base_url is the API of cloud '\(other.rawValue)' but upstream.cloud is '\(upstream.cloud.rawValue)'; "
                        + "the token host and scope follow upstream.cloud, so set upstream.cloud: \(other.rawValue)")
            }
        }
        if let timeout = duration(.upstreamConnectTimeout, mayBeZero: false) { upstream.connectTimeout = timeout }
        if let timeout = duration(.upstreamRequestTimeout, mayBeZero: false) { upstream.requestTimeout = timeout }
        if let count = integer(.upstreamMaxConcurrency, in: 1...1024) { upstream.maxConcurrency = count }
        upstream.caFile = path(.upstreamCAFile)
        if let text = text(.upstreamProxy) {
            if Self.isProxyURL(text) {
                upstream.proxy = text
            } else {
                // The value may hold a password: name the key, not the value.
                fail(.upstreamProxy, "the value (not shown, it may hold a password) is not a proxy URL; write scheme://host:port, such as \"http://proxy.example:3128\" (schemes http, https, socks4, socks4a, socks5, socks5h)")
            }
        }
        configuration.upstream = upstream
    }

    private mutating func readAuth(into configuration: inout GatewayConfiguration) {
        let cloud = configuration.upstream.cloud
        var auth = GatewayConfiguration.Auth(scope: cloud.scope)
        auth.tokenFile = path(.authTokenFile)
        auth.tenantID = text(.authTenantID)
        auth.clientID = text(.authClientID)
        auth.clientSecretFile = path(.authClientSecretFile)
        auth.clientCertificateFile = path(.authClientCertificateFile)
        auth.clientKeyFile = path(.authClientKeyFile)

        if let tenant = auth.tenantID, !Self.isTenantID(tenant) {
            fail(.authTenantID, "\(quoted(tenant)) is not a tenant; write the directory (tenant) id, a GUID, or the tenant's domain such as \"contoso.onmicrosoft.com\"")
        }
        if let client = auth.clientID, client.unicodeScalars.contains(where: { $0.properties.isWhitespace || $0.value < 0x20 || $0.value == 0x7F }) {
            fail(.authClientID, "\(quoted(client)) is not an application (client) id; write the app registration's id, a GUID such as \"2f8f1a6e-6c5b-4d3e-9a10-1b2c3d4e5f60\"")
        }

        let template = text(.authTokenURL) ?? cloud.tokenURLTemplate
        let forChecking = template.replacingOccurrences(of: "{tenant_id}", with: auth.tenantID ?? "common")
        if httpURL(.authTokenURL, forChecking, example: Cloud.commercial.tokenURLTemplate) != nil {
            auth.tokenURL = auth.tenantID.map { template.replacingOccurrences(of: "{tenant_id}", with: $0) } ?? template
        }
        auth.scope = text(.authScope) ?? cloud.scope

        checkCredentials(&auth)
        configuration.auth = auth
    }

    /// Exactly one way to get a token must be configured: a token file, or OAuth2 client
    /// credentials with a secret or a certificate. Whether the files can be read is checked by
    /// the daemon (and `mdegate check-config`), which reads them.
    private mutating func checkCredentials(_ auth: inout GatewayConfiguration.Auth) {
        let oauthKeys: [(ConfigurationKey, String?)] = [
            (.authTenantID, auth.tenantID), (.authClientID, auth.clientID),
            (.authClientSecretFile, auth.clientSecretFile),
            (.authClientCertificateFile, auth.clientCertificateFile), (.authClientKeyFile, auth.clientKeyFile),
        ]
        let oauthSet = oauthKeys.filter { $0.1 != nil }.map(\.0.rawValue)
        if auth.tokenFile != nil {
            if !oauthSet.isEmpty {
                fail(.authTokenFile, "is set together with OAuth2 client credentials (\(oauthSet.joined(separator: ", "))); configure one way to get a token: remove auth.token_file or the client credentials")
            }
            return
        }
        if oauthSet.isEmpty {
            fail(.authTokenFile, "no credentials are configured; set auth.token_file to a file holding a bearer token that another tool keeps fresh, or OAuth2 client credentials: auth.tenant_id, auth.client_id and a client secret (auth.client_secret_file, default $CREDENTIALS_DIRECTORY/client-secret) or a certificate (auth.client_certificate_file and auth.client_key_file)")
            return
        }
        if auth.tenantID == nil {
            fail(.authTenantID, "is not set; OAuth2 client credentials need the directory (tenant) id")
        }
        if auth.clientID == nil {
            fail(.authClientID, "is not set; OAuth2 client credentials need the application (client) id")
        }
        switch (auth.clientCertificateFile, auth.clientKeyFile) {
        case (nil, nil):
            if auth.clientSecretFile == nil {
                if let directory = environment["CREDENTIALS_DIRECTORY"], !directory.isEmpty {
                    auth.clientSecretFile = absolute(directory + "/client-secret")
                } else {
                    fail(.authClientSecretFile, "is not set and $CREDENTIALS_DIRECTORY is not set; set it to a file holding the client secret, or have systemd load it with LoadCredential=client-secret:PATH")
                }
            }
        case (.some, nil):
            fail(.authClientKeyFile, "is not set; a client certificate needs its private key: set auth.client_key_file to the key (PEM)")
        case (nil, .some):
            fail(.authClientCertificateFile, "is not set; a client key needs its certificate: set auth.client_certificate_file to the certificate (PEM)")
        case (.some, .some):
            if auth.clientSecretFile != nil {
                fail(.authClientSecretFile, "is set together with auth.client_certificate_file; use either a client secret or a certificate: remove one")
            }
        }
    }

    private mutating func readQuota(into configuration: inout GatewayConfiguration) {
        if let limits = limits(.quotaLimits) { configuration.quota.limits = limits }
        for key in ConfigurationKey.apiOverrides {
            if let limits = limits(key) { configuration.quota.apis[key.apiName!] = limits }
        }
        if let guardBand = duration(.quotaGuard, mayBeZero: true) { configuration.quota.guardBand = guardBand }
    }

    /// A list of limits, every one valid and at least one; nil when unset or wrong.
    private mutating func limits(_ key: ConfigurationKey) -> [Limit]? {
        guard let specs = list(key) else { return nil }
        var limits: [Limit] = []
        for (index, spec) in specs.enumerated() {
            if let limit = Limit(spec: spec) {
                limits.append(limit)
            } else {
                fail(key, index: index, "\(quoted(spec)) is not a limit\(Self.limitReason(spec)); write N/duration such as \"100/1m\" (units ms, s, m, h)")
            }
        }
        if specs.isEmpty {
            fail(key, "is empty; at least one limit is needed, such as [\"100/1m\", \"1500/1h\"] (Microsoft's limits)")
            return nil
        }
        return limits.count == specs.count ? limits : nil
    }

    private mutating func readRetryQueueAndLog(into configuration: inout GatewayConfiguration) {
        if let attempts = integer(.retryMaxAttempts, in: 1...Int.max) { configuration.retry.maxAttempts = attempts }
        let initial = duration(.retryInitialBackoff, mayBeZero: false)
        let maximum = duration(.retryMaxBackoff, mayBeZero: false)
        if let initial { configuration.retry.initialBackoff = initial }
        if let maximum { configuration.retry.maxBackoff = maximum }
        if configuration.retry.initialBackoff > configuration.retry.maxBackoff {
            fail(.retryInitialBackoff, "\(configuration.retry.initialBackoff.configString) is longer than retry.max_backoff (\(configuration.retry.maxBackoff.configString)); make initial_backoff at most max_backoff")
        }
        if let pending = integer(.queueMaxPending, in: 1...Int.max) { configuration.queue.maxPending = pending }
        if let text = text(.logLevel) {
            if let level = Logger.Level(rawValue: text.lowercased()) {
                configuration.log.level = level
            } else {
                fail(.logLevel, "\(quoted(text)) is not a log level; write one of \(Logger.Level.allCases.map(\.rawValue).joined(separator: ", "))")
            }
        }
        if let text = text(.logFormat) {
            if let format = GatewayConfiguration.Log.Format(rawValue: text.lowercased()) {
                configuration.log.format = format
            } else {
                fail(.logFormat, "\(quoted(text)) is not a log format; write text or json")
            }
        }
        if let text = text(.metricsAddress) {
            if let address = GatewayConfiguration.Metrics.Address(parsing: text) {
                configuration.metrics.address = address
            } else {
                fail(.metricsAddress, "\(quoted(text)) is not an address and port; write one such as \"127.0.0.1:9469\", \"[::1]:9469\" or \"localhost:9469\" (or \"\" for the socket's /metrics only)")
            }
        }
    }

    private mutating func readSharedQuota(into configuration: inout GatewayConfiguration) {
        var shared = GatewayConfiguration.SharedQuota()
        guard let url = text(.sharedQuotaURL) else {
            // This host spends the quota alone: the other keys mean nothing, and stay unset.
            for key in [ConfigurationKey.sharedQuotaPasswordFile, .sharedQuotaCAFile, .sharedQuotaKey, .sharedQuotaHostName]
            where text(key) != nil {
                warnings.append("\(key.rawValue) is set but shared_quota.url is not, so this host spends the quota alone and the setting is not used")
            }
            return
        }
        shared.caFile = path(.sharedQuotaCAFile)
        shared.passwordFile = path(.sharedQuotaPasswordFile)
        if shared.passwordFile == nil, let directory = environment["CREDENTIALS_DIRECTORY"], !directory.isEmpty,
            FileManager.default.fileExists(atPath: directory + "/postgres-password")
        {
            shared.passwordFile = absolute(directory + "/postgres-password")
        }
        // A written key and the default made of the two ids are held to the same rule.
        let keyLimit = 200
        let keyExample = "such as \"contoso/mde-playbooks\" (every host of one app registration must use the same)"
        if let text = text(.sharedQuotaKey) {
            if Self.isLedgerName(text, maxLength: keyLimit) {
                shared.key = text
            } else {
                fail(.sharedQuotaKey, "\(quoted(text)) is not a quota name; write up to \(keyLimit) printable characters, \(keyExample)")
            }
        } else if let tenant = configuration.auth.tenantID, let client = configuration.auth.clientID {
            let derived = "\(tenant)/\(client)"
            if Self.isLedgerName(derived, maxLength: keyLimit) {
                shared.key = derived
            } else if !problems.contains(where: { [ConfigurationKey.authTenantID.rawValue, ConfigurationKey.authClientID.rawValue].contains($0.key) }) {
                // Each id on its own was accepted; together they are too long to name a quota.
                fail(.sharedQuotaKey, "is not set, and its default, auth.tenant_id/auth.client_id, is \(derived.count) characters, more than a quota name's \(keyLimit); set shared_quota.key, \(keyExample)")
            }
        } else {
            shared.key = "default"
        }
        if let text = text(.sharedQuotaHostName) {
            if Self.isLedgerName(text, maxLength: 255) {
                shared.hostName = text
            } else {
                fail(.sharedQuotaHostName, "\(quoted(text)) is not a host name; write up to 255 printable characters, such as \"soar-worker-1\"")
            }
        } else {
            shared.hostName = ProcessInfo.processInfo.hostName
        }
        readSharedQuotaURL(url, into: &shared)
        configuration.sharedQuota = shared
    }

    /// `postgresql://user@host:port/database?sslmode=…&host=/socket/directory`, libpq's form;
    /// a password in it is refused (it belongs in `shared_quota.password_file`).
    private mutating func readSharedQuotaURL(_ text: String, into shared: inout GatewayConfiguration.SharedQuota) {
        let example = "\"postgresql://mdegate@db.example:5432/mdegate\""
        guard let components = URLComponents(string: text), let scheme = components.scheme?.lowercased(),
            scheme == "postgresql" || scheme == "postgres"
        else {
            // The value may hold a password: it is not echoed.
            fail(.sharedQuotaURL, "the value is not a PostgreSQL URL; write it like \(example)")
            return
        }
        if components.password != nil {
            fail(.sharedQuotaURL, "holds a password (not shown); remove it from the URL and put it in shared_quota.password_file (default $CREDENTIALS_DIRECTORY/postgres-password)")
            return
        }
        shared.username = components.user.flatMap { $0.isEmpty ? nil : $0 } ?? "mdegate"
        let path = components.path.hasPrefix("/") ? String(components.path.dropFirst()) : components.path
        shared.database = path.isEmpty ? shared.username : path
        if shared.database.contains("/") {
            fail(.sharedQuotaURL, "\(quoted(text)) names the database \(quoted(shared.database)); write one database name after the host, like \(example)")
            return
        }
        var port = components.port ?? 5432
        var sslmode: String?
        var socketDirectory: String?
        for item in components.queryItems ?? [] {
            switch item.name {
            case "sslmode": sslmode = item.value?.lowercased()
            case "host": socketDirectory = item.value
            case "port":
                guard let value = item.value.flatMap({ Int($0) }) else {
                    fail(.sharedQuotaURL, "\(quoted(text)) has port=\(item.value ?? ""); write a port from 1 to 65535")
                    return
                }
                port = value
            default:
                fail(.sharedQuotaURL, "\(quoted(text)) has the parameter \(quoted(item.name)), which mdegate does not know; it takes sslmode, host (a socket directory) and port")
                return
            }
        }
        guard (1...65535).contains(port) else {
            fail(.sharedQuotaURL, "\(quoted(text)) has the port \(port); write a port from 1 to 65535")
            return
        }
        let host = components.host ?? ""
        if let directory = socketDirectory ?? (host.hasPrefix("/") ? host : nil) {
            guard directory.hasPrefix("/") else {
                fail(.sharedQuotaURL, "\(quoted(text)) has host=\(directory); a socket directory must be an absolute path, such as host=/run/postgresql")
                return
            }
            shared.endpoint = .unixSocket(path: "\(directory)/.s.PGSQL.\(port)")
        } else if host.isEmpty {
            fail(.sharedQuotaURL, "\(quoted(text)) names no host; write it like \(example), or give a socket directory with ?host=/run/postgresql")
            return
        } else {
            shared.endpoint = .tcp(host: host, port: port)
        }
        let local = socketDirectory != nil || host.hasPrefix("/") || Self.isLoopback(host)
        switch sslmode {
        case nil: shared.tls = !local
        case "disable":
            shared.tls = false
            if !local {
                warnings.append("shared_quota.url has sslmode=disable for \(host), a host that is not loopback: the ledger's traffic and the login cross the network unencrypted")
            }
        case "require", "verify-ca", "verify-full":
            if case .unixSocket = shared.endpoint {
                fail(.sharedQuotaURL, "\(quoted(text)) asks for TLS (sslmode=\(sslmode!)) over a Unix socket, which PostgreSQL does not offer; remove sslmode")
                return
            }
            // Verified, whichever of these is written: nothing turns the check off.
            shared.tls = true
        default:
            fail(.sharedQuotaURL, "\(quoted(text)) has sslmode=\(sslmode!); write disable, require, verify-ca or verify-full (the last three all verify the server's certificate and name)")
            return
        }
        if shared.caFile != nil && !shared.tls {
            warnings.append("shared_quota.ca_file is set but the connection to the shared quota does not use TLS, so the CA is not used")
        }
        shared.url = text
    }

    /// A name stored in the shared ledger: printable, not empty, bounded.
    static func isLedgerName(_ text: String, maxLength: Int) -> Bool {
        !text.isEmpty && text.count <= maxLength && !text.unicodeScalars.contains { $0.value < 0x20 || $0.value == 0x7F }
    }

    // MARK: Reading one key

    private func configKey(_ key: ConfigurationKey) -> ConfigKey { ConfigKey([key.section, key.name]) }

    /// The key's single value, trimmed; nil when unset, empty or YAML null.
    mutating func text(_ key: ConfigurationKey) -> String? {
        if let value = reader.string(forKey: configKey(key)) {
            let trimmed = value.trimmingCharacters(in: .whitespaces)
            return ScalarText.isNull(trimmed) ? nil : trimmed
        }
        if reader.stringArray(forKey: configKey(key)) != nil {
            fail(key, "is a list, but it takes a single value; write one value")
        }
        return nil
    }

    /// The key's list: a YAML sequence, or one comma-separated string (the environment's form).
    mutating func list(_ key: ConfigurationKey) -> [String]? {
        let items: [String]
        if let array = reader.stringArray(forKey: configKey(key)) {
            items = array
        } else if let single = reader.string(forKey: configKey(key)) {
            items = single.split(separator: ",", omittingEmptySubsequences: false).map(String.init)
        } else {
            return nil
        }
        let trimmed = items.map { $0.trimmingCharacters(in: .whitespaces) }
        if trimmed.count == 1, ScalarText.isNull(trimmed[0]) { return nil }
        return trimmed
    }

    mutating func integer(_ key: ConfigurationKey, in range: ClosedRange<Int>) -> Int? {
        let wanted = range.upperBound == .max
            ? "a whole number of at least \(range.lowerBound)"
            : "a whole number from \(range.lowerBound) to \(range.upperBound)"
        if let value = reader.int(forKey: configKey(key)) {
            guard range.contains(value) else {
                fail(key, "\(value) is out of range; write \(wanted)")
                return nil
            }
            return value
        }
        if let text = text(key) {
            fail(key, "\(quoted(text)) is not a whole number; write \(wanted)")
        }
        return nil
    }

    mutating func duration(_ key: ConfigurationKey, mayBeZero: Bool) -> Duration? {
        guard let text = text(key) else { return nil }
        guard let duration = Duration(configString: text) else {
            fail(key, "\(quoted(text)) is not a duration; write a number of at least 0 and a unit, such as \"250ms\", \"1.5s\", \"1m\" or \"1h\"")
            return nil
        }
        if !mayBeZero && duration == .zero {
            fail(key, "\(quoted(text)) must be longer than zero; write a duration such as \"1s\"")
            return nil
        }
        return duration
    }

    /// A file path, made absolute against the working directory. A NUL (YAML can write one,
    /// `"\0"`) is refused: Foundation would quietly turn it into `%00`, another file's name.
    mutating func path(_ key: ConfigurationKey) -> String? {
        guard let text = text(key) else { return nil }
        guard !text.unicodeScalars.contains("\0") else {
            fail(key, "contains a NUL character, which no file path can hold; write the path without it")
            return nil
        }
        return absolute(text)
    }

    /// `path` resolved against the working directory and standardized: what the daemon opens,
    /// and what `check-config` prints, for every path, including those built from
    /// `$CREDENTIALS_DIRECTORY`.
    func absolute(_ path: String) -> String {
        let base = URL(fileURLWithPath: workingDirectory, isDirectory: true)
        return URL(fileURLWithPath: path, relativeTo: base).standardizedFileURL.path
    }

    /// Checks an absolute http(s) URL and returns it without a trailing slash. `http://` is
    /// refused except for loopback hosts: the bearer token must not cross a network in clear
    /// text, but the local simulator serves plain HTTP on 127.0.0.1.
    mutating func httpURL(_ key: ConfigurationKey, _ text: String, example: String) -> String? {
        guard let components = URLComponents(string: text),
            let scheme = components.scheme?.lowercased(), scheme == "https" || scheme == "http",
            let host = components.host, !host.isEmpty
        else {
            fail(key, "\(quoted(text)) is not an absolute http(s) URL; write it like \(quoted(example))")
            return nil
        }
        if components.query != nil || components.fragment != nil || components.user != nil {
            fail(key, "\(quoted(text)) has a query, fragment or user name; write only scheme, host, port and path, like \(quoted(example))")
            return nil
        }
        if scheme == "http" && !Self.isLoopback(host) {
            fail(key, "\(quoted(text)) uses http:// for a host that is not loopback, which would send the token in clear text; use https://, or http:// only with 127.0.0.1, ::1 or localhost (such as the local simulator)")
            return nil
        }
        var url = text
        while url.hasSuffix("/") { url.removeLast() }
        return url
    }

    // MARK: Messages

    /// Records a problem. The key is labelled with its environment variable when that is where
    /// the value came from, since the file would then look innocent.
    mutating func fail(_ key: ConfigurationKey, index: Int? = nil, _ message: String) {
        let name = key.rawValue + (index.map { "[\($0)]" } ?? "")
        let label = environment[key.environmentName].map { _ in "\(name) (from \(key.environmentName))" } ?? name
        problems.append(.init(key: name, message: "\(label): \(message)"))
    }

    private func quoted(_ text: String) -> String { "\"\(text)\"" }

    // MARK: Value syntax

    /// Octal permission bits, three or four digits (`660`, `0660`), at most 0777: set-id and
    /// sticky bits mean nothing on a socket.
    static func fileMode(_ text: String) -> mode_t? {
        guard (3...4).contains(text.count), text.allSatisfy({ ("0"..."7").contains($0) }),
            let value = mode_t(text, radix: 8), value <= 0o777
        else { return nil }
        return value
    }

    static func isLoopback(_ host: String) -> Bool {
        let host = host.lowercased().trimmingCharacters(in: CharacterSet(charactersIn: "[]"))
        if host == "localhost" || host == "localhost." || host == "::1" || host == "0:0:0:0:0:0:0:1" { return true }
        let octets = host.split(separator: ".", omittingEmptySubsequences: false)
        guard octets.count == 4, octets.allSatisfy({ $0.count <= 3 && UInt8($0) != nil }) else { return false }
        return octets[0] == "127"
    }

    static func isProxyURL(_ text: String) -> Bool {
        let schemes: Set<String> = ["http", "https", "socks4", "socks4a", "socks5", "socks5h"]
        guard let components = URLComponents(string: text), let scheme = components.scheme?.lowercased(),
            schemes.contains(scheme), let host = components.host, !host.isEmpty
        else { return false }
        return true
    }

    /// A tenant becomes part of the token URL's path, so only characters that need no escaping
    /// there are accepted: a GUID, a domain such as `contoso.onmicrosoft.com`, or a test
    /// server's name such as the simulator's `sim-tenant`.
    static func isTenantID(_ text: String) -> Bool {
        text.allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "." || $0 == "-" || $0 == "_") }
    }

    /// Why a limit spec did not parse, when it is one of the common mistakes.
    static func limitReason(_ spec: String) -> String {
        let parts = spec.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count == 2 else { return "" }
        if let calls = Int(parts[0].trimmingCharacters(in: .whitespaces)), calls <= 0 {
            return " (it must allow at least one call)"
        }
        if let window = Duration(configString: String(parts[1])), window == .zero {
            return " (its window must be longer than zero)"
        }
        return ""
    }
}
