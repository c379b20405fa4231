import Foundation
import MDEGateConfig
import Testing

@Suite("shared_quota: the PostgreSQL URL and its companions")
struct SharedQuotaConfigTests {
    @Test("without a url, this host spends the quota alone, and its companions are warned about")
    func disabled() throws {
        let loaded = try load("shared_quota:\n  key: contoso\n  host_name: a\n")
        #expect(!loaded.configuration.sharedQuota.isEnabled)
        #expect(loaded.configuration.sharedQuota == GatewayConfiguration.SharedQuota())
        #expect(loaded.warnings.count == 2, "\(loaded.warnings)")
        #expect(loaded.warnings.allSatisfy { $0.contains("shared_quota.url is not") })
    }

    @Test("a remote host gets verified TLS; user, port and database come from the URL; key and host have defaults")
    func remote() throws {
        let loaded = try load(
            "shared_quota:\n  url: postgresql://gw@db.example:6543/ledger\n",
            environment: ["MDEGATE_AUTH_TENANT_ID": "contoso.onmicrosoft.com", "MDEGATE_AUTH_CLIENT_ID": "app", "MDEGATE_AUTH_CLIENT_SECRET_FILE": "/s"])
        let shared = loaded.configuration.sharedQuota
        #expect(shared.endpoint == .tcp(host: "db.example", port: 6543))
        #expect(shared.username == "gw")
        #expect(shared.database == "ledger")
        #expect(shared.tls)
        #expect(shared.key == "contoso.onmicrosoft.com/app")
        #expect(shared.hostName == ProcessInfo.processInfo.hostName)
        #expect(loaded.warnings.isEmpty, "\(loaded.warnings)")
    }

    @Test("a socket directory or a loopback host goes without TLS unless sslmode asks; sslmode=disable elsewhere is warned about")
    func localAndPlain() throws {
        let socket = try load("shared_quota:\n  url: postgresql:///mdegate?host=/run/postgresql\n").configuration.sharedQuota
        #expect(socket.endpoint == .unixSocket(path: "/run/postgresql/.s.PGSQL.5432"))
        #expect(!socket.tls)
        #expect(socket.username == "mdegate" && socket.database == "mdegate")
        #expect(socket.key == "default")
        let loopback = try load("shared_quota:\n  url: postgresql://mdegate@127.0.0.1/mdegate\n").configuration.sharedQuota
        #expect(!loopback.tls)
        let forced = try load("shared_quota:\n  url: postgresql://mdegate@localhost/mdegate?sslmode=verify-full\n").configuration.sharedQuota
        #expect(forced.tls)
        let plain = try load("shared_quota:\n  url: postgresql://mdegate@db.example/mdegate?sslmode=disable\n")
        #expect(!plain.configuration.sharedQuota.tls)
        #expect(plain.warnings.contains { $0.contains("unencrypted") }, "\(plain.warnings)")
    }

    @Test(
        "a bad URL is refused naming the key, and a password in it is never echoed",
        arguments: [
            ("https://db.example/mdegate", "not a PostgreSQL URL"),
            ("postgresql://mdegate:hunter2-secret@db.example/mdegate", "password_file"),
            ("postgresql://mdegate@db.example/mdegate?sslmode=allow", "sslmode=allow"),
            ("postgresql://mdegate@db.example/mdegate?connect_timeout=3", "connect_timeout"),
            ("postgresql://mdegate@/mdegate", "names no host"),
            ("postgresql://mdegate@/mdegate?host=run/pg", "absolute path"),
            ("postgresql://mdegate@/mdegate?host=/run/pg&sslmode=require", "Unix socket"),
            ("postgresql://mdegate@db.example:0/mdegate", "port"),
        ])
    func refused(url: String, mentions: String) throws {
        let error = refusal("shared_quota:\n  url: \"\(url)\"\n")
        #expect(error?.keys == ["shared_quota.url"])
        let message = error?.description ?? ""
        #expect(message.contains(mentions), "\(message)")
        #expect(!message.contains("hunter2-secret"))
    }

    @Test("key and host_name must be printable and bounded")
    func names() throws {
        let error = refusal("shared_quota:\n  url: postgresql://mdegate@db.example/mdegate\n  key: \"a\\tb\"\n  host_name: \"\(String(repeating: "h", count: 300))\"\n")
        #expect(error?.keys.sorted() == ["shared_quota.host_name", "shared_quota.key"])
    }

    /// Found by FuzzConfig (seed Fuzz/Corpus/FuzzConfig/finding-long-default-key): a long client id made a
    /// default key that check-config printed and that then failed its own check on reload.
    @Test("a default key (tenant/client) too long for a quota name is refused naming shared_quota.key, and a set key loads")
    func derivedKeyTooLong() throws {
        let client = "2f" + String(repeating: "\\\\", count: 90) + "8f1a6e-6c5b-4d3e-9a10-1b2c3d4e5f60"
        let auth = "auth:\n  tenant_id: contoso.onmicrosoft.com\n  client_id: '\(client)'\n  client_secret_file: /s\n"
        let url = "shared_quota:\n  url: postgresql://mdegate@db.example/mdegate\n"
        let error = refusal(auth + url, environment: [:])
        #expect(error?.keys == ["shared_quota.key"])
        #expect(error?.description.contains("more than a quota name's 200") == true, "\(error?.description ?? "")")

        let loaded = try load(auth + url + "  key: contoso/mde\n", environment: [:])
        #expect(loaded.configuration.sharedQuota.key == "contoso/mde")
        #expect(loaded.configuration.auth.clientID == client)
        let rendered = try load(loaded.configuration.renderedYAML(), environment: [:])
        #expect(rendered.configuration == loaded.configuration)
    }

    @Test("a client id with a control character is refused once, naming auth.client_id, not the key it would make")
    func controlInClientID() throws {
        let error = refusal(
            "auth:\n  tenant_id: contoso.onmicrosoft.com\n  client_id: \"app\\x7F1\"\n  client_secret_file: /s\nshared_quota:\n  url: postgresql://mdegate@db.example/mdegate\n",
            environment: [:])
        #expect(error?.keys == ["auth.client_id"])
    }

    @Test("a reload that changes shared_quota keeps the running one and says it needs a restart")
    func reload() throws {
        let running = try load("shared_quota:\n  url: postgresql://mdegate@db.example/mdegate\n").configuration
        let reloaded = try load("shared_quota:\n  url: postgresql://mdegate@other.example/mdegate\n  key: k2\n").configuration
        let applied = running.applyingReload(reloaded)
        #expect(applied.configuration.sharedQuota == running.sharedQuota)
        #expect(applied.needsRestart == [.sharedQuotaURL, .sharedQuotaKey])
    }
}
