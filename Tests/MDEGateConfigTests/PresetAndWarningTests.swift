import Foundation
import MDEGateConfig
import MDEGateCore
import Testing

@Suite("Cloud presets")
struct CloudPresetTests {
    static let tenant = "contoso.onmicrosoft.us"

    @Test("each cloud sets base URL, token host and scope", arguments: [
        ("commercial", "https://api.securitycenter.microsoft.com", "https://login.microsoftonline.com"),
        ("gcc", "https://api-gcc.securitycenter.microsoft.us", "https://login.microsoftonline.com"),
        ("gcc-high", "https://api-gov.securitycenter.microsoft.us", "https://login.microsoftonline.us"),
        ("dod", "https://api-gov.securitycenter.microsoft.us", "https://login.microsoftonline.us"),
    ])
    func preset(_ cloud: String, baseURL: String, login: String) throws {
        let loaded = try load(
            "upstream:\n  cloud: \(cloud)\nauth:\n  tenant_id: \(Self.tenant)\n  client_id: 2f8f1a6e-6c5b-4d3e-9a10-1b2c3d4e5f60\n  client_secret_file: /s\n",
            environment: [:])
        let configuration = loaded.configuration
        #expect(configuration.upstream.cloud.rawValue == cloud)
        #expect(configuration.upstream.baseURL == baseURL)
        #expect(configuration.auth.tokenURL == "\(login)/\(Self.tenant)/oauth2/v2.0/token")
        #expect(configuration.auth.scope == "\(baseURL)/.default")
        #expect(loaded.warnings.isEmpty)
    }

    @Test("explicit keys override the preset, the rest of the preset stays")
    func explicitOverride() throws {
        let configuration = try load(
            "upstream:\n  cloud: gcc-high\n  base_url: http://127.0.0.1:8787\n", environment: tokenFileOnly
        ).configuration
        #expect(configuration.upstream.baseURL == "http://127.0.0.1:8787")
        #expect(configuration.auth.scope == "https://api-gov.securitycenter.microsoft.us/.default")
        #expect(configuration.auth.tokenURL == "https://login.microsoftonline.us/{tenant_id}/oauth2/v2.0/token")

        let overridden = try load(
            "upstream:\n  cloud: gcc\nauth:\n  scope: https://example.test/.default\n  token_url: http://localhost:9/{tenant_id}/t\n"
        ).configuration
        #expect(overridden.upstream.baseURL == "https://api-gcc.securitycenter.microsoft.us")
        #expect(overridden.auth.scope == "https://example.test/.default")
        #expect(overridden.auth.tokenURL == "http://localhost:9/{tenant_id}/t")
    }

    @Test("a base URL from another cloud than upstream.cloud is warned about")
    func mismatchedCloud() throws {
        let loaded = try load("upstream:\n  cloud: commercial\n  base_url: https://api-gcc.securitycenter.microsoft.us\n")
        #expect(loaded.warnings.count == 1)
        #expect(loaded.warnings.first?.contains("upstream.cloud: gcc") == true)
    }
}

@Suite("Unknown keys: a typo never passes silently")
struct UnknownKeyTests {
    @Test("a misspelt key is warned about with the key that was probably meant")
    func typo() throws {
        let loaded = try load("quota:\n  limit: [\"5/1s\"]\n")
        #expect(loaded.warnings == ["unknown key 'quota.limit' (did you mean 'quota.limits'?)"])
        #expect(loaded.configuration.quota.limits.map(\.spec) == ["100/1m", "1500/1h"])
    }

    @Test("a key in the wrong section points to the right one")
    func wrongSection() throws {
        let loaded = try load("upstream:\n  token_file: /run/token\n")
        #expect(loaded.warnings == ["unknown key 'upstream.token_file' (did you mean 'auth.token_file'?)"])
    }

    @Test("misspelt sections and unrelated keys are warned about too")
    func otherUnknowns() throws {
        let loaded = try load("qouta:\n  guard: 1s\nfrobnicate: yes\nlog: debug\n")
        #expect(loaded.warnings.contains("unknown key 'qouta.guard' (did you mean 'quota.guard'?)"))
        #expect(loaded.warnings.contains("unknown key 'frobnicate' (ignored)"))
        #expect(loaded.warnings.contains { $0.hasPrefix("key 'log' is a section") && $0.contains("'log.level'") })
        #expect(loaded.warnings.count == 3)
    }

    @Test("unknown MDEGATE_ variables are warned about, without their values")
    func unknownVariables() throws {
        let loaded = try load(
            nil,
            environment: tokenFileOnly.merging([
                "MDEGATE_QUOTA_LIMIT": "5/1s", "MDEGATE_AUTH_CLIENT_SECRET": "hunter2",
                "MDEGATE_SOCKET": "/run/x.sock", "PATH": "/usr/bin",
            ]) { $1 })
        #expect(
            loaded.warnings == [
                "unknown environment variable 'MDEGATE_AUTH_CLIENT_SECRET' (did you mean 'MDEGATE_AUTH_CLIENT_SECRET_FILE'?)",
                "unknown environment variable 'MDEGATE_QUOTA_LIMIT' (did you mean 'MDEGATE_QUOTA_LIMITS'?)",
            ])
        #expect(!loaded.warnings.joined().contains("hunter2"))
    }
}

@Suite("check-config output and reload")
struct RenderingTests {
    static let full = """
        socket:
          path: /run/gw/gw.sock
          mode: "0600"
        upstream:
          cloud: dod
          connect_timeout: 1.5s
          ca_file: /etc/ssl/extra.pem
          proxy: socks5h://proxy.example:1080
        auth:
          tenant_id: contoso.onmicrosoft.us
          client_id: 2f8f1a6e-6c5b-4d3e-9a10-1b2c3d4e5f60
          client_certificate_file: /etc/mdegate/cert.pem
          client_key_file: /etc/mdegate/key.pem
        quota:
          limits: ["5/1s", "12/4s", "1/250ms"]
          guard: 0s
        log:
          level: trace
        """

    @Test("the rendered YAML loads back to an equal configuration", arguments: [("", tokenFileOnly), (full, [:])])
    func roundTrip(_ yaml: String, environment: [String: String]) throws {
        let original = try load(yaml, environment: environment).configuration
        let rendered = original.renderedYAML()
        let reloaded = try load(rendered, environment: [:])
        #expect(reloaded.configuration == original)
        #expect(reloaded.warnings.isEmpty)
    }

    @Test("the rendered YAML lists every key, defaults included")
    func everyKey() throws {
        let rendered = try load(nil).configuration.renderedYAML()
        // Per-API limits are rendered only where they differ from quota.limits.
        #expect(rendered.contains("\n  apis: {}\n"))
        for key in ConfigurationKey.allCases where !key.isAPIOverride {
            #expect(rendered.contains("\n\(key.section):\n") || rendered.contains("\n  \(key.name): "), "\(key)")
            #expect(rendered.contains("  \(key.name): "), "\(key)")
        }
        #expect(rendered.contains("  limits: [\"100/1m\", \"1500/1h\"]\n"))
        #expect(rendered.contains("  guard: 250ms\n"))
        #expect(rendered.contains("  mode: \"0660\"\n"))
        #expect(rendered.contains("  ca_file: \"\"\n"))
    }

    @Test("a proxy password is masked in the rendered YAML")
    func maskedProxyPassword() throws {
        let configuration = try load("upstream:\n  proxy: http://user:hunter2@proxy.example:3128\n").configuration
        #expect(configuration.upstream.proxy == "http://user:hunter2@proxy.example:3128")
        let rendered = configuration.renderedYAML()
        #expect(!rendered.contains("hunter2"))
        #expect(rendered.contains("proxy: \"http://user:****@proxy.example:3128\""))
    }

    @Test("strings that need escaping survive rendering")
    func escaping() throws {
        let awkward = try load(nil, environment: ["MDEGATE_AUTH_TOKEN_FILE": "/tmp/a \"quoted\" #path\\x: no"])
            .configuration
        let reloaded = try load(awkward.renderedYAML(), environment: [:]).configuration
        #expect(reloaded.auth.tokenFile == "/tmp/a \"quoted\" #path\\x: no")
    }

    @Test("characters YAML folds into a space (NEL, LS, PS) or refuses (C1 controls, BOM) survive rendering (found with FuzzConfig)")
    func breaksAndRefusedCharacters() throws {
        let value = "/tmp/a\u{85}b\u{2028}c\u{2029}d\u{80}e\u{9F}f\u{FEFF}g"
        let awkward = try load(nil, environment: ["MDEGATE_AUTH_TOKEN_FILE": value]).configuration
        #expect(awkward.auth.tokenFile?.unicodeScalars.contains("\u{85}") == true)
        let rendered = awkward.renderedYAML()
        #expect(rendered.contains(#"\u0085b\u2028c\u2029d\u0080e\u009Ff\uFEFFg""#))
        let reloaded = try load(rendered, environment: [:]).configuration
        #expect(reloaded == awkward)
    }

    @Test("a reload keeps socket and state, and lists them as needing a restart")
    func reload() throws {
        let running = try load(nil).configuration
        var edited = running
        edited.socket.path = "/run/other.sock"
        edited.state.path = "/var/lib/other.sqlite"
        edited.quota.guardBand = .milliseconds(10)
        let (effective, needsRestart) = running.applyingReload(edited)
        #expect(needsRestart == [.socketPath, .statePath])
        #expect(effective.socket == running.socket)
        #expect(effective.state == running.state)
        #expect(effective.quota.guardBand == .milliseconds(10))
        #expect(running.applyingReload(running).needsRestart.isEmpty)
    }
}
