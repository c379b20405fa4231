import Foundation
import MDEGateConfig
import MDEGateCore
import Testing

@Suite("Validation: a bad value stops start-up with a message naming its key")
struct ValidationTests {
    /// A bad value, the key it must be reported under, and text the message must contain.
    struct Case: CustomTestStringConvertible, Sendable {
        var yaml: String
        var key: String
        var mentions: String
        var testDescription: String { "\(key) ← \(yaml.replacingOccurrences(of: "\n", with: " "))" }
    }

    static let cases: [Case] = [
        Case(yaml: "socket:\n  mode: \"0999\"", key: "socket.mode", mentions: "\"0999\" is not a file mode"),
        Case(yaml: "socket:\n  mode: \"1777\"", key: "socket.mode", mentions: "\"0000\" to \"0777\""),
        Case(yaml: "socket:\n  path: /\(String(repeating: "s", count: 120))", key: "socket.path", mentions: "at most 107"),
        Case(yaml: "upstream:\n  cloud: azure", key: "upstream.cloud", mentions: "commercial, gcc, gcc-high, dod"),
        Case(yaml: "upstream:\n  base_url: api.securitycenter.microsoft.com", key: "upstream.base_url", mentions: "not an absolute http(s) URL"),
        Case(yaml: "upstream:\n  base_url: ftp://example.com", key: "upstream.base_url", mentions: "not an absolute http(s) URL"),
        Case(yaml: "upstream:\n  base_url: https://example.com/?x=1", key: "upstream.base_url", mentions: "query"),
        Case(yaml: "upstream:\n  base_url: http://example.com", key: "upstream.base_url", mentions: "not loopback"),
        Case(yaml: "upstream:\n  base_url: http://128.0.0.1:8787", key: "upstream.base_url", mentions: "not loopback"),
        Case(yaml: "upstream:\n  base_url: http://localhost.example.com", key: "upstream.base_url", mentions: "not loopback"),
        Case(yaml: "upstream:\n  connect_timeout: 0s", key: "upstream.connect_timeout", mentions: "longer than zero"),
        Case(yaml: "upstream:\n  connect_timeout: 10", key: "upstream.connect_timeout", mentions: "\"10\" is not a duration"),
        Case(yaml: "upstream:\n  request_timeout: abc", key: "upstream.request_timeout", mentions: "\"abc\" is not a duration"),
        Case(yaml: "upstream:\n  max_concurrency: 0", key: "upstream.max_concurrency", mentions: "from 1 to 1024"),
        Case(yaml: "upstream:\n  max_concurrency: 1025", key: "upstream.max_concurrency", mentions: "1025 is out of range"),
        Case(yaml: "upstream:\n  max_concurrency: eight", key: "upstream.max_concurrency", mentions: "\"eight\" is not a whole number"),
        Case(yaml: "upstream:\n  proxy: proxy.example:3128", key: "upstream.proxy", mentions: "not a proxy URL"),
        Case(yaml: "auth:\n  token_url: http://login.example.com/{tenant_id}", key: "auth.token_url", mentions: "not loopback"),
        Case(yaml: "quota:\n  limits: [\"100/1m\", \"100/1x\"]", key: "quota.limits[1]", mentions: "\"100/1x\" is not a limit"),
        Case(yaml: "quota:\n  limits: [\"100/0s\"]", key: "quota.limits[0]", mentions: "window must be longer than zero"),
        Case(yaml: "quota:\n  limits: [\"0/1m\"]", key: "quota.limits[0]", mentions: "at least one call"),
        Case(yaml: "quota:\n  limits: [abc]", key: "quota.limits[0]", mentions: "\"abc\" is not a limit"),
        Case(yaml: "quota:\n  limits: []", key: "quota.limits", mentions: "at least one limit"),
        Case(yaml: "quota:\n  guard: -1s", key: "quota.guard", mentions: "\"-1s\" is not a duration"),
        Case(yaml: "retry:\n  max_attempts: 0", key: "retry.max_attempts", mentions: "at least 1"),
        Case(yaml: "retry:\n  initial_backoff: 2m\n  max_backoff: 1m", key: "retry.initial_backoff", mentions: "at most max_backoff"),
        Case(yaml: "retry:\n  initial_backoff: 2m", key: "retry.initial_backoff", mentions: "longer than retry.max_backoff (1m)"),
        Case(yaml: "retry:\n  max_backoff: 0s", key: "retry.max_backoff", mentions: "longer than zero"),
        Case(yaml: "queue:\n  max_pending: 0", key: "queue.max_pending", mentions: "at least 1"),
        Case(yaml: "log:\n  level: verbose", key: "log.level", mentions: "trace, debug, info, notice, warning, error, critical"),
        Case(yaml: "log:\n  level: [debug]", key: "log.level", mentions: "is a list"),
        Case(yaml: "state:\n  retention: 0s", key: "state.retention", mentions: "longer than zero"),
        Case(yaml: "state:\n  retention: a day", key: "state.retention", mentions: "\"a day\" is not a duration"),
        Case(yaml: "metrics:\n  address: \"9469\"", key: "metrics.address", mentions: "\"127.0.0.1:9469\""),
        Case(yaml: "metrics:\n  address: \"127.0.0.1:70000\"", key: "metrics.address", mentions: "not an address and port"),
        Case(yaml: "metrics:\n  address: \"::1:9469\"", key: "metrics.address", mentions: "[::1]:9469"),
        Case(yaml: "metrics:\n  address: \":9469\"", key: "metrics.address", mentions: "not an address and port"),
    ]

    @Test("each invalid value is refused and named by its key", arguments: cases)
    func refusedWithItsKey(_ example: Case) throws {
        let error = refusal(example.yaml + "\n")
        #expect(error?.keys == [example.key])
        let message = error?.description ?? ""
        #expect(message.hasPrefix("\(example.key): "))
        #expect(message.contains(example.mentions), "\(message)")
    }

    @Test("the message says key, value, what is wrong and what to write")
    func messageShape() throws {
        let error = refusal("quota:\n  limits: [\"100/1m\", \"100/1x\"]\n")
        #expect(
            error?.description
                == #"quota.limits[1]: "100/1x" is not a limit; write N/duration such as "100/1m" (units ms, s, m, h)"#)
    }

    @Test("every problem is reported at once, so one edit fixes them all")
    func allProblemsAtOnce() throws {
        let error = refusal("log:\n  level: loud\nqueue:\n  max_pending: -1\nquota:\n  guard: soon\n")
        #expect(error?.keys.sorted() == ["log.level", "queue.max_pending", "quota.guard"])
        #expect(error?.description.split(separator: "\n").count == 3)
    }

    @Test("a bad value from the environment names its variable too")
    func environmentLabel() throws {
        let error = refusal(nil, environment: tokenFileOnly.merging(["MDEGATE_QUOTA_LIMITS": "5/1s,12/4q"]) { $1 })
        #expect(error?.keys == ["quota.limits[1]"])
        #expect(error?.description.hasPrefix("quota.limits[1] (from MDEGATE_QUOTA_LIMITS): \"12/4q\"") == true)
    }

    @Test("a proxy URL that is refused is not echoed, since it may hold a password")
    func proxyNotEchoed() throws {
        let error = refusal("upstream:\n  proxy: \"ftp://user:hunter2@proxy\"\n")
        #expect(error?.keys == ["upstream.proxy"])
        #expect(error?.description.contains("hunter2") == false)
    }

    @Test("durations take ms, s, m and h, fractions, and zero where zero makes sense")
    func durationEdgeCases() throws {
        #expect(try load("quota:\n  guard: 0s\n").configuration.quota.guardBand == .zero)
        #expect(try load("quota:\n  guard: 0ms\n").configuration.quota.guardBand == .zero)
        #expect(try load("upstream:\n  request_timeout: 1.5s\n").configuration.upstream.requestTimeout == .milliseconds(1500))
        #expect(try load("retry:\n  max_backoff: 1h\n").configuration.retry.maxBackoff == .seconds(3600))
        #expect(refusal("quota:\n  guard: 250\n")?.keys == ["quota.guard"])
        #expect(refusal("quota:\n  guard: 1d\n")?.keys == ["quota.guard"])
        #expect(refusal("quota:\n  guard: s\n")?.keys == ["quota.guard"])
    }

    @Test("limits accept any N/duration, including sub-second windows")
    func limitEdgeCases() throws {
        let limits = try load("quota:\n  limits: [\"5/250ms\", \"1/1.5s\", \"1500/1h\"]\n").configuration.quota.limits
        #expect(
            limits == [
                Limit(calls: 5, window: .milliseconds(250)), Limit(calls: 1, window: .milliseconds(1500)),
                Limit(calls: 1500, window: .seconds(3600)),
            ])
        #expect(refusal("quota:\n  limits: [\"5/-1s\"]\n")?.keys == ["quota.limits[0]"])
        #expect(refusal("quota:\n  limits: [\"5\"]\n")?.keys == ["quota.limits[0]"])
        #expect(refusal("quota:\n  limits: [\"1.5/1s\"]\n")?.keys == ["quota.limits[0]"])
    }

    @Test("http:// is accepted only for loopback hosts", arguments: [
        "http://127.0.0.1:8787", "http://127.3.2.1", "http://localhost:8787", "http://[::1]:8787",
        "https://example.com", "https://api.securitycenter.microsoft.com/",
    ])
    func loopbackHTTP(_ url: String) throws {
        let loaded = try load(nil, environment: tokenFileOnly.merging(["MDEGATE_UPSTREAM_BASE_URL": url]) { $1 })
        #expect(loaded.configuration.upstream.baseURL == (url.hasSuffix("/") ? String(url.dropLast()) : url))
    }
}

@Suite("Credentials: exactly one way to get a token")
struct CredentialTests {
    @Test("with no credentials at all, the error says what to set")
    func nothingSet() throws {
        let error = refusal(nil, environment: [:])
        #expect(error?.keys == ["auth.token_file"])
        let message = error?.description ?? ""
        for mention in ["auth.token_file", "auth.tenant_id", "auth.client_id", "client_secret_file", "CREDENTIALS_DIRECTORY"] {
            #expect(message.contains(mention), "\(mention)")
        }
    }

    @Test("a token file is enough")
    func tokenFile() throws {
        #expect(try load(nil).configuration.auth.method == .tokenFile(path: "/run/mdegate/token"))
    }

    @Test("a token file together with client credentials is ambiguous and refused")
    func both() throws {
        let error = refusal("auth:\n  tenant_id: contoso.onmicrosoft.com\n")
        #expect(error?.keys == ["auth.token_file"])
        #expect(error?.description.contains("auth.tenant_id") == true)
    }

    static let tenant = "11111111-2222-3333-4444-555555555555"
    static let client = "2f8f1a6e-6c5b-4d3e-9a10-1b2c3d4e5f60"

    @Test("a relative $CREDENTIALS_DIRECTORY gives an absolute secret path, which check-config's output keeps (found by FuzzConfig)")
    func relativeCredentialsDirectory() throws {
        let loaded = try load(
            "auth:\n  tenant_id: \(Self.tenant)\n  client_id: \(Self.client)\n",
            environment: ["CREDENTIALS_DIRECTORY": "credentials/./mdegate.service"])
        #expect(loaded.configuration.auth.clientSecretFile == "/srv/credentials/mdegate.service/client-secret")
        // Loaded again elsewhere, the rendered file still names the same secret.
        let directory = try TemporaryDirectory()
        let rendered = try directory.write(loaded.configuration.renderedYAML())
        let reloaded = try GatewayConfiguration.load(path: rendered, environment: [:], workingDirectory: "/elsewhere")
        #expect(reloaded.configuration == loaded.configuration)
    }

    @Test("a path with a NUL is refused, not quietly turned into %00 (found by FuzzConfig)")
    func pathWithNUL() {
        // YAML's "\0" is a NUL.
        let error = refusal("auth:\n  token_file: \"/run/mdegate/to\\0ken\"\n", environment: [:])
        #expect(error?.keys.first == "auth.token_file")
        #expect(error?.description.contains("NUL") == true)
    }

    @Test("the client secret defaults to $CREDENTIALS_DIRECTORY/client-secret")
    func credentialsDirectory() throws {
        let loaded = try load(
            "auth:\n  tenant_id: \(Self.tenant)\n  client_id: \(Self.client)\n",
            environment: ["CREDENTIALS_DIRECTORY": "/run/credentials/mdegate.service"])
        #expect(loaded.configuration.auth.clientSecretFile == "/run/credentials/mdegate.service/client-secret")
        #expect(
            loaded.configuration.auth.tokenURL
                == "https://login.microsoftonline.com/\(Self.tenant)/oauth2/v2.0/token")
        if case .clientSecret(let tenant, let client, let file)? = loaded.configuration.auth.method {
            #expect(tenant == Self.tenant && client == Self.client)
            #expect(file == "/run/credentials/mdegate.service/client-secret")
        } else {
            Issue.record("expected client-secret credentials, got \(String(describing: loaded.configuration.auth.method))")
        }
    }

    @Test("client credentials without a secret anywhere are refused on client_secret_file")
    func noSecret() throws {
        let error = refusal("auth:\n  tenant_id: \(Self.tenant)\n  client_id: \(Self.client)\n", environment: [:])
        #expect(error?.keys == ["auth.client_secret_file"])
        #expect(error?.description.contains("LoadCredential") == true)
    }

    @Test("a certificate and its key are an alternative to the secret")
    func certificate() throws {
        let loaded = try load(
            "auth:\n  tenant_id: \(Self.tenant)\n  client_id: \(Self.client)\n  client_certificate_file: cert.pem\n  client_key_file: key.pem\n",
            environment: [:])
        #expect(
            loaded.configuration.auth.method
                == .clientCertificate(
                    tenantID: Self.tenant, clientID: Self.client,
                    certificateFile: "/srv/cert.pem", keyFile: "/srv/key.pem"))
        #expect(loaded.configuration.auth.clientSecretFile == nil)
    }

    @Test("the simulator's tenant and client names are accepted, with its token endpoint")
    func simulatorCredentials() throws {
        let loaded = try load(
            """
            upstream:
              base_url: http://127.0.0.1:8787
            auth:
              tenant_id: sim-tenant
              client_id: sim-client
              client_secret_file: run/secret
              token_url: http://127.0.0.1:8787/{tenant_id}/oauth2/v2.0/token
            """, environment: [:])
        #expect(loaded.configuration.auth.tokenURL == "http://127.0.0.1:8787/sim-tenant/oauth2/v2.0/token")
        #expect(
            loaded.configuration.auth.method
                == .clientSecret(tenantID: "sim-tenant", clientID: "sim-client", secretFile: "/srv/run/secret"))
    }

    @Test("incomplete client credentials name the missing key", arguments: [
        ("auth:\n  tenant_id: \(tenant)\n  client_secret_file: /s\n", "auth.client_id"),
        ("auth:\n  client_id: \(client)\n  client_secret_file: /s\n", "auth.tenant_id"),
        ("auth:\n  tenant_id: \(tenant)\n  client_id: \(client)\n  client_certificate_file: /c\n", "auth.client_key_file"),
        ("auth:\n  tenant_id: \(tenant)\n  client_id: \(client)\n  client_key_file: /k\n", "auth.client_certificate_file"),
        ("auth:\n  tenant_id: \(tenant)\n  client_id: \(client)\n  client_secret_file: /s\n  client_certificate_file: /c\n  client_key_file: /k\n", "auth.client_secret_file"),
        ("auth:\n  tenant_id: a/b\n  client_id: \(client)\n  client_secret_file: /s\n", "auth.tenant_id"),
        ("auth:\n  tenant_id: \(tenant)\n  client_id: my app\n  client_secret_file: /s\n", "auth.client_id"),
    ])
    func incomplete(_ yaml: String, key: String) throws {
        #expect(refusal(yaml, environment: [:])?.keys == [key])
    }
}
