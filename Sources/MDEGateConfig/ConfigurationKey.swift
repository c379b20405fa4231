/// Every key the configuration file understands, in the order `check-config` prints them.
///
/// One list serves the reader, the environment-variable names, the unknown-key warnings and the
/// rendered YAML, so a key cannot be known to one of them and forgotten by another.
public enum ConfigurationKey: String, CaseIterable, Sendable {
    case socketPath = "socket.path"
    case socketMode = "socket.mode"
    case statePath = "state.path"
    case stateRetention = "state.retention"
    case upstreamCloud = "upstream.cloud"
    case upstreamBaseURL = "upstream.base_url"
    case upstreamConnectTimeout = "upstream.connect_timeout"
    case upstreamRequestTimeout = "upstream.request_timeout"
    case upstreamMaxConcurrency = "upstream.max_concurrency"
    case upstreamCAFile = "upstream.ca_file"
    case upstreamProxy = "upstream.proxy"
    case authTokenFile = "auth.token_file"
    case authTenantID = "auth.tenant_id"
    case authClientID = "auth.client_id"
    case authClientSecretFile = "auth.client_secret_file"
    case authClientCertificateFile = "auth.client_certificate_file"
    case authClientKeyFile = "auth.client_key_file"
    case authTokenURL = "auth.token_url"
    case authScope = "auth.scope"
    case quotaLimits = "quota.limits"
    case quotaGuard = "quota.guard"
    // One per upstream API (the route table's names; a test checks they agree).
    case quotaAPICancel = "quota.apis.cancel"
    case quotaAPIGetMachineAction = "quota.apis.get_machine_action"
    case quotaAPIListMachineActions = "quota.apis.list_machine_actions"
    case quotaAPIIsolate = "quota.apis.isolate"
    case quotaAPIUnisolate = "quota.apis.unisolate"
    case quotaAPIRunAntivirusScan = "quota.apis.run_antivirus_scan"
    case quotaAPICollectInvestigationPackage = "quota.apis.collect_investigation_package"
    case quotaAPIRestrictCodeExecution = "quota.apis.restrict_code_execution"
    case quotaAPIUnrestrictCodeExecution = "quota.apis.unrestrict_code_execution"
    case quotaAPIStopAndQuarantineFile = "quota.apis.stop_and_quarantine_file"
    case retryMaxAttempts = "retry.max_attempts"
    case retryInitialBackoff = "retry.initial_backoff"
    case retryMaxBackoff = "retry.max_backoff"
    case queueMaxPending = "queue.max_pending"
    case logLevel = "log.level"
    case logFormat = "log.format"
    case metricsAddress = "metrics.address"
    case sharedQuotaURL = "shared_quota.url"
    case sharedQuotaPasswordFile = "shared_quota.password_file"
    case sharedQuotaCAFile = "shared_quota.ca_file"
    case sharedQuotaKey = "shared_quota.key"
    case sharedQuotaHostName = "shared_quota.host_name"

    /// The top-level YAML mapping the key lives in, e.g. `upstream`.
    public var section: String { String(rawValue.prefix { $0 != "." }) }

    /// The key inside its section, e.g. `base_url` (`apis.isolate` for a per-API override).
    public var name: String { String(rawValue.drop { $0 != "." }.dropFirst()) }

    /// `quota.apis.<name>`: limits of one upstream API that differ from `quota.limits`.
    public var isAPIOverride: Bool { rawValue.hasPrefix("quota.apis.") }

    /// The upstream API a `quota.apis.<name>` key overrides.
    public var apiName: String? { isAPIOverride ? String(rawValue.dropFirst("quota.apis.".count)) : nil }

    /// Every `quota.apis.<name>` key.
    public static let apiOverrides: [ConfigurationKey] = allCases.filter(\.isAPIOverride)

    /// The environment variable that overrides this key: `MDEGATE_` + section + `_` + name,
    /// uppercased, e.g. `MDEGATE_UPSTREAM_BASE_URL`. It is the name swift-configuration's
    /// `EnvironmentVariablesProvider` derives from the key `mdegate.upstream.base_url`.
    public var environmentName: String {
        "\(Self.environmentPrefix)\(section.uppercased())_\(name.uppercased().replacingOccurrences(of: ".", with: "_"))"
    }

    static let environmentPrefix = "MDEGATE_"

    /// The top-level sections, in order.
    static let sections: [String] = {
        var seen: [String] = []
        for key in allCases where !seen.contains(key.section) { seen.append(key.section) }
        return seen
    }()

    /// `MDEGATE_…` variables that belong to mdegate but are not configuration keys: the client
    /// commands find the socket with `MDEGATE_SOCKET`, so it must not be warned about.
    static let otherEnvironmentNames: Set<String> = ["MDEGATE_SOCKET", "MDEGATE_CONFIG"]
}

/// Finds the key an operator probably meant, so a typo is reported with its fix.
enum KeySuggestion {
    /// The closest known key to `unknown`, where `spelling` writes a key the way `unknown` is
    /// written (dotted in the file, `MDEGATE_…` in the environment): first a key whose name
    /// ends `unknown` (`upstream.token_file` → `auth.token_file`), else the nearest by edit
    /// distance when the difference is small enough to be a typo.
    static func closest(
        to unknown: String,
        separator: String,
        spelling: (ConfigurationKey) -> String
    ) -> String? {
        let unknownLower = unknown.lowercased()
        let keys = ConfigurationKey.allCases
        if let sameText = keys.first(where: { spelling($0).lowercased() == unknownLower }) {
            return spelling(sameText)
        }
        let sameName = keys.filter { unknownLower.hasSuffix((separator + $0.name).lowercased()) }
        if sameName.count == 1 { return spelling(sameName[0]) }

        var best: (spelling: String, distance: Int)?
        for key in keys {
            let candidate = spelling(key)
            let distance = editDistance(unknownLower, candidate.lowercased())
            if distance < (best?.distance ?? .max) { best = (candidate, distance) }
        }
        guard let best, best.distance <= max(2, unknown.count / 4) else { return nil }
        return best.spelling
    }

    /// Levenshtein distance between two strings.
    static func editDistance(_ a: String, _ b: String) -> Int {
        let a = Array(a), b = Array(b)
        if a.isEmpty { return b.count }
        if b.isEmpty { return a.count }
        var previous = Array(0...b.count)
        var current = [Int](repeating: 0, count: b.count + 1)
        for i in 1...a.count {
            current[0] = i
            for j in 1...b.count {
                let substitution = previous[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1)
                current[j] = min(previous[j] + 1, current[j - 1] + 1, substitution)
            }
            swap(&previous, &current)
        }
        return previous[b.count]
    }
}
