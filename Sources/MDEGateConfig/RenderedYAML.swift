import Foundation
import MDEGateCore

extension GatewayConfiguration {
    /// The effective configuration as YAML, every key present with defaults, cloud presets and
    /// environment overrides applied, for `mdegate check-config`.
    ///
    /// Loading the output again gives an equal configuration, so an operator can freeze what
    /// the daemon runs with. The one exception is a password inside `upstream.proxy`, which is
    /// shown as `****` because this output ends up in terminals, tickets and logs.
    public func renderedYAML() -> String {
        var lines: [String] = [
            "# Effective mdegate configuration: defaults, cloud presets and MDEGATE_* overrides applied."
        ]
        var section = ""
        for key in ConfigurationKey.allCases {
            if key.section != section {
                section = key.section
                lines.append("\(section):")
            }
            if key.isAPIOverride {
                // Only the APIs whose limits differ, nested under `apis:`, so that loading the
                // output again gives the same configuration.
                if key == ConfigurationKey.apiOverrides.first {
                    lines.append(quota.apis.isEmpty ? "  apis: {}" : "  apis:")
                }
                if let limits = quota.apis[key.apiName!] {
                    lines.append("    \(key.apiName!): \(Self.rendered(limits))")
                }
                continue
            }
            lines.append("  \(key.name): \(renderedValue(of: key))")
        }
        return lines.joined(separator: "\n") + "\n"
    }

    /// The YAML scalar or flow sequence for one key; an exhaustive switch, so a new key cannot
    /// be left out of `check-config`.
    private func renderedValue(of key: ConfigurationKey) -> String {
        switch key {
        case .socketPath: YAMLText.quoted(socket.path)
        case .socketMode: YAMLText.quoted(Self.octal(socket.mode))
        case .statePath: YAMLText.quoted(state.path)
        case .stateRetention: state.retention.configString
        case .upstreamCloud: upstream.cloud.rawValue
        case .upstreamBaseURL: YAMLText.quoted(upstream.baseURL)
        case .upstreamConnectTimeout: upstream.connectTimeout.configString
        case .upstreamRequestTimeout: upstream.requestTimeout.configString
        case .upstreamMaxConcurrency: String(upstream.maxConcurrency)
        case .upstreamCAFile: YAMLText.quoted(upstream.caFile ?? "")
        case .upstreamProxy: YAMLText.quoted(upstream.proxy.map(Self.maskingPassword) ?? "")
        case .authTokenFile: YAMLText.quoted(auth.tokenFile ?? "")
        case .authTenantID: YAMLText.quoted(auth.tenantID ?? "")
        case .authClientID: YAMLText.quoted(auth.clientID ?? "")
        case .authClientSecretFile: YAMLText.quoted(auth.clientSecretFile ?? "")
        case .authClientCertificateFile: YAMLText.quoted(auth.clientCertificateFile ?? "")
        case .authClientKeyFile: YAMLText.quoted(auth.clientKeyFile ?? "")
        case .authTokenURL: YAMLText.quoted(auth.tokenURL)
        case .authScope: YAMLText.quoted(auth.scope)
        case .quotaLimits: Self.rendered(quota.limits)
        case .quotaAPICancel, .quotaAPIGetMachineAction, .quotaAPIListMachineActions, .quotaAPIIsolate,
            .quotaAPIUnisolate, .quotaAPIRunAntivirusScan, .quotaAPICollectInvestigationPackage,
            .quotaAPIRestrictCodeExecution, .quotaAPIUnrestrictCodeExecution, .quotaAPIStopAndQuarantineFile:
            quota.apis[key.apiName!].map(Self.rendered) ?? "[]"
        case .quotaGuard: quota.guardBand.configString
        case .retryMaxAttempts: String(retry.maxAttempts)
        case .retryInitialBackoff: retry.initialBackoff.configString
        case .retryMaxBackoff: retry.maxBackoff.configString
        case .queueMaxPending: String(queue.maxPending)
        case .logLevel: log.level.rawValue
        case .logFormat: log.format.rawValue
        case .metricsAddress: YAMLText.quoted(metrics.address?.description ?? "")
        case .sharedQuotaURL: YAMLText.quoted(sharedQuota.url ?? "")
        case .sharedQuotaPasswordFile: YAMLText.quoted(sharedQuota.passwordFile ?? "")
        case .sharedQuotaCAFile: YAMLText.quoted(sharedQuota.caFile ?? "")
        case .sharedQuotaKey: YAMLText.quoted(sharedQuota.key)
        case .sharedQuotaHostName: YAMLText.quoted(sharedQuota.hostName)
        }
    }

    private static func rendered(_ limits: [Limit]) -> String {
        "[" + limits.map { YAMLText.quoted($0.spec) }.joined(separator: ", ") + "]"
    }

    private static func octal(_ mode: mode_t) -> String {
        let digits = String(mode, radix: 8)
        return String(repeating: "0", count: max(0, 4 - digits.count)) + digits
    }

    /// `http://user:secret@proxy:3128` → `http://user:****@proxy:3128`.
    static func maskingPassword(_ url: String) -> String {
        guard var components = URLComponents(string: url), components.password != nil else { return url }
        components.password = "****"
        return components.string ?? url
    }
}

/// YAML double-quoted scalars: the one form that can hold any string without surprises
/// (`no`, `0660`, `: ` and `#` are all plain text inside it).
///
/// What YAML does not read back as itself is escaped: control characters; NEL, LS and PS,
/// which a YAML reader takes for line breaks and folds into a space; and the C1 controls, the
/// byte order mark and U+FFFE/U+FFFF, which it refuses inside a document.
enum YAMLText {
    static func quoted(_ text: String) -> String {
        var result = "\""
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\\": result += "\\\\"
            case "\"": result += "\\\""
            case "\n": result += "\\n"
            case "\t": result += "\\t"
            case "\r": result += "\\r"
            case _ where scalar.value < 0x20 || scalar.value == 0x7F:
                result += "\\x" + (scalar.value < 0x10 ? "0" : "") + String(scalar.value, radix: 16, uppercase: true)
            case _ where (0x80...0x9F).contains(scalar.value) || [0x2028, 0x2029, 0xFEFF, 0xFFFE, 0xFFFF].contains(scalar.value):
                let digits = String(scalar.value, radix: 16, uppercase: true)
                result += "\\u" + String(repeating: "0", count: 4 - digits.count) + digits
            default: result.unicodeScalars.append(scalar)
            }
        }
        return result + "\""
    }
}

extension GatewayConfiguration {
    /// Applies a reloaded configuration to a running one.
    ///
    /// The socket is bound and the database opened once, at start-up; a reload cannot move
    /// them. Those settings keep their running values and are returned by key, so the daemon
    /// can say that they wait for a restart instead of silently ignoring the edit.
    public func applyingReload(
        _ reloaded: GatewayConfiguration
    ) -> (configuration: GatewayConfiguration, needsRestart: [ConfigurationKey]) {
        var needsRestart: [ConfigurationKey] = []
        if reloaded.socket.path != socket.path { needsRestart.append(.socketPath) }
        if reloaded.socket.mode != socket.mode { needsRestart.append(.socketMode) }
        if reloaded.state.path != state.path { needsRestart.append(.statePath) }
        // The connection to the shared ledger is opened once; which ledger the host spends must
        // not change under requests already admitted.
        needsRestart += SharedQuota.changedKeys(from: sharedQuota, to: reloaded.sharedQuota)
        // The log's format is set when logging starts; its level follows a reload.
        if reloaded.log.format != log.format { needsRestart.append(.logFormat) }
        // The metrics listener is bound once, like the socket.
        if reloaded.metrics != metrics { needsRestart.append(.metricsAddress) }
        var effective = reloaded
        effective.socket = socket
        effective.state = state
        effective.sharedQuota = sharedQuota
        effective.log.format = log.format
        effective.metrics = metrics
        return (effective, needsRestart)
    }
}
