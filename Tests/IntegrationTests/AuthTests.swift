import Foundation
import MDEGateTransport
import Testing

/// The gateway against the simulator over HTTPS, as against Microsoft: OAuth2 client credentials
/// (secret and certificate), token refresh, a refused token, a login outage, TLS trust and the
/// proxy. Every test runs the real daemon with the test CA as `upstream.ca_file`.
@Suite("OAuth2, certificates, TLS and proxies", .timeLimit(.minutes(HarnessTime.suiteMinutes)))
struct AuthTests {
    /// The options for OAuth2 with `credential` against the rig's HTTPS simulator.
    static func oauth(_ credential: GatewayOptions.Credential? = nil) -> (SimulatorProcess, TestPKI?, GatewayOptions) async throws
        -> GatewayOptions
    {
        { _, pki, options in
            var options = options
            let pki = try #require(pki)
            options.caFile = pki.caFile
            options.credential = credential
                ?? .clientCertificate(certificate: pki.client.certificatePath, key: pki.client.keyPath)
            return options
        }
    }

    @Test("with a client secret the gateway fetches a token over HTTPS and the call succeeds; status shows the token's expiry")
    func clientSecret() async throws {
        var options = GatewayOptions()
        options.limits = ["100/1h"]
        try await withRig(gateway: options, tls: true, adjust: Self.oauth(.clientSecret)) { rig in
            let answer = try await rig.client.cancel(machineActionID())
            #expect(answer.status == 200, "\(answer.summary)")
            let status = try await rig.client.status()
            #expect(status["auth"]?["mode"]?.string == "client_secret", "\(status)")
            #expect(status["auth"]?["tokenExpiresAt"]?.string != nil, "\(status)")
            #expect(status["auth"]?["lastError"] == .null, "\(status)")
            let stats = try await rig.simulator.stats()
            #expect(stats.tokenEndpoint.grantedWithSecret == 1, "\(stats)")
            #expect(stats.arrivals == 1, "token requests are not API calls: \(stats)")
            #expect(status["limits"]?[0]?["used"]?.int == 1, "the token request spent no quota: \(status)")
            // The metrics count the token request and say when the token expires.
            let metrics = try await rig.client.metrics()
            #expect(metrics.value("mdegate_token_requests_total", ["result": "success"]) == 1)
            #expect(metrics.value("mdegate_token_requests_total", ["result": "failure"]) == 0)
            let expiry = try #require(metrics.value("mdegate_token_expiry_timestamp_seconds"))
            #expect(expiry > Date().timeIntervalSince1970, "a token in hand expires later")
        }
    }

    @Test("with a certificate the gateway signs a client assertion the token endpoint verifies, and the call succeeds")
    func clientCertificate() async throws {
        try await withRig(tls: true, adjust: Self.oauth()) { rig in
            let answer = try await rig.client.cancel(machineActionID())
            #expect(answer.status == 200, "\(answer.summary)")
            let stats = try await rig.simulator.stats()
            #expect(stats.tokenEndpoint.grantedWithAssertion == 1, "\(stats)")
            #expect(stats.tokenEndpoint.refused == 0, "\(stats)")
            let status = try await rig.client.status()
            #expect(status["auth"]?["mode"]?.string == "client_certificate", "\(status)")
        }
    }

    @Test("twenty callers waiting for the first token cause exactly one token request")
    func singleFlight() async throws {
        try await withRig(tls: true, adjust: { simulator, pki, options in
            // A slow login host: every caller arrives while the first token is still on its way.
            try await simulator.setTokenDelay(.seconds(2))
            return try await Self.oauth(.clientSecret)(simulator, pki, options)
        }) { rig in
            let answers = try await withThrowingTaskGroup(of: Int.self) { group in
                for _ in 0..<20 {
                    group.addTask { try await rig.withSeparateClient { try await $0.cancel(machineActionID()).status } }
                }
                return try await group.reduce(into: [Int]()) { $0.append($1) }
            }
            #expect(answers == Array(repeating: 200, count: 20))
            let stats = try await rig.simulator.stats()
            #expect(stats.tokenRequests == 1, "\(stats)")
            #expect(stats.tokenEndpoint.maxInFlight == 1, "\(stats)")
        }
    }

    @Test("a token is refreshed ahead of its expiry: calls across several lifetimes never see a 401")
    func refreshAhead() async throws {
        try await withRig(simulator: ["--token-lifetime", "3"], tls: true, adjust: Self.oauth()) { rig in
            let stats = try await eventually("a third token, fetched while calls keep coming", timeout: .seconds(60), interval: .milliseconds(200), {
                let answer = try await rig.client.cancel(machineActionID())
                #expect(answer.status == 200, "\(answer.summary)")
                return try await rig.simulator.stats()
            }) { $0.tokenEndpoint.granted >= 3 }
            #expect(stats.answered(401) == 0, "every token was replaced before it expired: \(stats)")
        }
    }

    @Test("an idle gateway keeps its token fresh, so the first call after a quiet spell does not wait for one")
    func refreshWhileIdle() async throws {
        try await withRig(simulator: ["--token-lifetime", "2"], tls: true, adjust: Self.oauth(.clientSecret)) { rig in
            let stats = try await eventually("tokens fetched with no call asking", timeout: .seconds(60), interval: .milliseconds(100), {
                try await rig.simulator.stats()
            }) { $0.tokenEndpoint.granted >= 3 }
            #expect(stats.arrivals == 0, "\(stats)")
            #expect(stats.tokenEndpoint.maxInFlight == 1, "\(stats)")
            let answer = try await rig.client.cancel(machineActionID())
            #expect(answer.status == 200, "\(answer.summary)")
            #expect(try await rig.simulator.stats().answered(401) == 0)
        }
    }

    @Test("a reload that leaves upstream and auth alone keeps the token: no new token request, calls go on")
    func reloadKeepsToken() async throws {
        var options = GatewayOptions()
        options.limits = ["100/1h"]
        try await withRig(gateway: options, tls: true, adjust: Self.oauth(.clientSecret)) { rig in
            #expect(try await rig.client.cancel(machineActionID()).status == 200)
            // The token endpoint is down from now on: a reload that dropped the token would stop calls.
            try await rig.simulator.setTokenOutage(.serviceUnavailable)
            var changed = options
            changed.caFile = try #require(rig.pki).caFile
            changed.credential = .clientSecret
            changed.limits = ["90/1h"]
            try rig.directory.write(changed.yaml(directory: rig.directory, upstream: rig.simulator.baseURL), to: "config.yaml")
            rig.gateway.process.send(SIGHUP)
            _ = try await eventually("the new limits in /v1/status", { try await rig.client.status() }) {
                $0["limits"]?[0]?["spec"]?.string == "90/1h"
            }
            let answer = try await rig.client.cancel(machineActionID())
            #expect(answer.status == 200, "\(answer.summary)")
            let stats = try await rig.simulator.stats()
            #expect(stats.tokenRequests == 1, "\(stats)")
        }
    }

    @Test("a 401 causes one token refresh and one retry, which counts in the ledger")
    func unauthorizedRetry() async throws {
        var options = GatewayOptions()
        options.limits = ["100/1h"]  // a window no slow machine outlasts: all three calls stay in it
        try await withRig(gateway: options, tls: true, adjust: Self.oauth(.clientSecret)) { rig in
            #expect(try await rig.client.cancel(machineActionID()).status == 200)
            #expect(try await rig.simulator.revokeTokens() == 1)
            let id = machineActionID()
            let answer = try await rig.client.cancel(id)
            #expect(answer.status == 200, "\(answer.summary)")
            let record = try await rig.client.record(try #require(answer.requestID))
            #expect(record["attempts"]?.int == 2, "\(record)")
            let stats = try await rig.simulator.stats()
            #expect(stats.arrivals(for: id) == 2, "\(stats)")
            #expect(stats.answered(401) == 1, "\(stats)")
            #expect(stats.tokenRequests == 2, "\(stats)")
            let status = try await rig.client.status()
            #expect(status["limits"]?[0]?["used"]?.int == 3, "the refused attempt counts: \(status)")
        }
    }

    @Test("a second 401 in a row is the answer: the caller gets it, after exactly two attempts")
    func unauthorizedTwice() async throws {
        var options = GatewayOptions()
        // A token file whose token the API does not accept: a new look at the file finds the same.
        options.tokenFileContent = "not-a-valid-token"
        try await withRig(gateway: options) { rig in
            let id = machineActionID()
            let answer = try await rig.client.cancel(id)
            #expect(answer.status == 401, "\(answer.summary)")
            let stats = try await rig.simulator.stats()
            #expect(stats.arrivals(for: id) == 2, "\(stats)")
        }
    }

    @Test("while the login host is down, requests wait queued and status says why; once it is back, they complete")
    func loginOutage() async throws {
        try await withRig(tls: true, adjust: { simulator, pki, options in
            try await simulator.setTokenOutage(.serviceUnavailable)
            return try await Self.oauth(.clientSecret)(simulator, pki, options)
        }) { rig in
            let accepted = try await rig.client.cancel(machineActionID(), prefer: "respond-async")
            #expect(accepted.status == 202, "\(accepted.summary)")
            let rid = try #require(try accepted.json()["id"]?.string)
            let status = try await eventually("the outage in /v1/status", { try await rig.client.status() }) {
                $0["auth"]?["lastError"]?.string?.contains("503") == true
            }
            #expect(status["queue"]?["depth"]?.int == 1, "\(status)")
            let cli = try await rig.gateway.cli(["status"])
            #expect(cli.stdout.contains("503"), "mdegate status shows the auth problem:\n\(cli.stdout)")
            #expect(try await rig.simulator.stats().arrivals == 0)

            try await rig.simulator.setTokenOutage(.none)
            let done = try await eventually("the queued request to complete", timeout: .seconds(90), { try await rig.client.record(rid) }) {
                $0["state"]?.string == "done"
            }
            #expect(done["response"]?["status"]?.int == 200, "\(done)")
            let after = try await rig.client.status()
            #expect(after["auth"]?["lastError"] == .null, "\(after)")
        }
    }

    @Test("a wrong client secret shows in status (without the secret) and a corrected file is picked up")
    func wrongSecret() async throws {
        try await withRig(tls: true, adjust: Self.oauth(.clientSecret)) { rig in
            // The first token is fetched at start-up with the right secret; then the secret is
            // replaced and that token revoked, so the next one must come from the wrong secret.
            _ = try await eventually("the first token", { try await rig.client.status() }) {
                $0["auth"]?["tokenExpiresAt"]?.string != nil
            }
            try rig.directory.write("wrong-secret-value", to: "client-secret")
            #expect(try await rig.simulator.revokeTokens() == 1)
            let accepted = try await rig.client.cancel(machineActionID(), prefer: "respond-async")
            let rid = try #require(try accepted.json()["id"]?.string)
            let status = try await eventually("the refusal in /v1/status", { try await rig.client.status() }) {
                $0["auth"]?["lastError"]?.string?.contains("invalid_client") == true
            }
            #expect(!"\(status)".contains("wrong-secret-value"), "\(status)")
            #expect(!"\(status)".contains(rig.simulator.clientSecret), "\(status)")
            let metrics = try await rig.client.metrics()
            let failures = metrics.value("mdegate_token_requests_total", ["result": "failure"]) ?? 0
            #expect(failures >= 1, "the refused token request is counted")
            #expect(!metrics.text.contains("wrong-secret-value"))

            try rig.directory.write(rig.simulator.clientSecret, to: "client-secret")
            let done = try await eventually("the queued request to complete", timeout: .seconds(90), { try await rig.client.record(rid) }) {
                $0["state"]?.string == "done"
            }
            #expect(done["response"]?["status"]?.int == 200, "\(done)")
        }
    }

    @Test("without upstream.ca_file the HTTPS upstream is refused with a certificate error; nothing is sent")
    func noCAFile() async throws {
        try await withRig(tls: true) { rig in
            let answer = try await rig.client.cancel(machineActionID())
            #expect(answer.status == 502, "\(answer.summary)")
            let record = try await rig.client.record(try #require(answer.requestID))
            let error = record["lastError"]?.string ?? ""
            #expect(error.lowercased().contains("certificate"), "\(record)")
            #expect(try await rig.simulator.stats().arrivals == 0)
        }
    }

    @Test("upstream.proxy carries both the token request and the API call (CONNECT for HTTPS)")
    func proxyOverHTTPS() async throws {
        try await withConnectProxy { proxy in
            try await withRig(tls: true, adjust: { simulator, pki, options in
                var options = try await Self.oauth(.clientSecret)(simulator, pki, options)
                options.proxy = proxy.url
                return options
            }) { rig in
                let answer = try await rig.client.cancel(machineActionID())
                #expect(answer.status == 200, "\(answer.summary)")
                #expect(proxy.tunnels(to: rig.simulator.authority) >= 1, "\(proxy.traffic)")
                let stats = try await rig.simulator.stats()
                #expect(stats.tokenRequests == 1 && stats.arrivals == 1, "\(stats)")
            }
        }
    }

    @Test("upstream.proxy forwards plain-HTTP token and API requests one by one, so each is seen")
    func proxyOverHTTP() async throws {
        try await withConnectProxy { proxy in
            try await withRig(adjust: { _, _, options in
                var options = options
                options.credential = .clientSecret
                options.proxy = proxy.url
                return options
            }) { rig in
                let answer = try await rig.client.cancel(machineActionID())
                #expect(answer.status == 200, "\(answer.summary)")
                // One token request and one API call, each forwarded.
                #expect(proxy.forwarded(to: rig.simulator.authority) == 2, "\(proxy.traffic)")
            }
        }
    }

    // MARK: Credentials that cannot work

    enum BrokenCredential: String, CaseIterable, Sendable {
        case keyOfAnotherCertificate, emptySecret, certificateAsKey
    }

    @Test("credentials that cannot work stop check-config and serve with a message naming the file, never the key", arguments: BrokenCredential.allCases)
    func brokenCredentials(_ broken: BrokenCredential) async throws {
        try await sharingTheMachine {
            let directory = try TemporaryDirectory()
            defer { directory.remove() }
            let pki = try await TestPKI(directory: directory.path)
            var options = GatewayOptions()
            let expected: String
            switch broken {
            case .keyOfAnotherCertificate:
                options.credential = .clientCertificate(certificate: pki.client.certificatePath, key: pki.otherClient.keyPath)
                expected = "does not belong to the certificate"
            case .emptySecret:
                options.credential = .clientSecret
                try directory.write("\n", to: "client-secret")
                expected = "client secret file \(directory.file("client-secret")) is empty"
            case .certificateAsKey:
                options.credential = .clientCertificate(certificate: pki.client.certificatePath, key: pki.client.certificatePath)
                expected = "is not an unencrypted RSA private key"
            }
            try directory.write(options.yaml(directory: directory, upstream: "https://127.0.0.1:9"), to: "config.yaml")
            let checked = try await CommandResult.run(["check-config", "--config", directory.file("config.yaml")])
            #expect(checked.exitCode == 1, "\(checked)")
            #expect(checked.stderr.contains(expected), "\(checked)")
            let served = try await CommandResult.run(["serve", "--config", directory.file("config.yaml")])
            #expect(served.exitCode != 0, "\(served)")
            #expect(served.stderr.contains(expected), "\(served)")
            for output in [checked.stdout + checked.stderr, served.stdout + served.stderr] {
                for key in [pki.client.keyPEM, pki.otherClient.keyPEM] {
                    for line in key.split(separator: "\n") where !line.hasPrefix("-----") {
                        #expect(!output.contains(line), "a line of a private key appeared")
                    }
                }
            }
        }
    }

    // MARK: Secrets

    /// Everything an operator or a tool can read about the session: every log line so far,
    /// `/v1/status`, `mdegate status` (table and JSON), `mdegate check-config`.
    static func everythingVisible(_ rig: TestRig) async throws -> String {
        var visible = rig.gateway.process.lines(.stderr) + rig.gateway.process.lines(.stdout)
        visible.append("\(try await rig.client.status())")
        for arguments in [["status"], ["status", "--json"], ["check-config", "--config", rig.gateway.configPath]] {
            let result = try await rig.gateway.cli(arguments)
            visible += [result.stdout, result.stderr]
        }
        return visible.joined(separator: "\n")
    }

    @Test("a whole client-secret session (fetch, refresh, 401 retry, refused secret) never shows the secret or a token")
    func secretNeverShown() async throws {
        var options = GatewayOptions()
        options.logLevel = "trace"  // the most the daemon ever says, libcurl's own lines included
        try await withRig(simulator: ["--token-lifetime", "2"], gateway: options, tls: true, adjust: Self.oauth(.clientSecret)) { rig in
            // Fetch and refresh: calls across more than two lifetimes.
            _ = try await eventually("a refreshed token", timeout: .seconds(60), interval: .milliseconds(200), {
                #expect(try await rig.client.cancel(machineActionID()).status == 200)
                return try await rig.simulator.stats()
            }) { $0.tokenEndpoint.granted >= 3 }
            // A refused token, then a refused secret.
            try rig.directory.write("wrong-secret-value", to: "client-secret")
            _ = try await rig.simulator.revokeTokens()
            #expect(try await rig.client.cancel(machineActionID(), prefer: "respond-async").status == 202)
            _ = try await eventually("the refused secret in /v1/status", { try await rig.client.status() }) {
                $0["auth"]?["lastError"]?.string?.contains("invalid_client") == true
            }
            let visible = try await Self.everythingVisible(rig)
            #expect(visible.contains("invalid_client"), "the refusal itself is shown")
            for secret in [rig.simulator.clientSecret, "wrong-secret-value", rig.simulator.token] {
                #expect(!visible.contains(secret), "\(secret) appeared")
            }
            // Issued tokens are JWTs: base64url of '{"' starts every one of them.
            #expect(!visible.contains("eyJ"), "a token appeared")
        }
    }

    @Test("a certificate session never shows the private key, an assertion or a token")
    func keyNeverShown() async throws {
        var options = GatewayOptions()
        options.logLevel = "trace"
        try await withRig(gateway: options, tls: true, adjust: Self.oauth()) { rig in
            #expect(try await rig.client.cancel(machineActionID()).status == 200)
            _ = try await rig.simulator.revokeTokens()
            #expect(try await rig.client.cancel(machineActionID()).status == 200)
            let visible = try await Self.everythingVisible(rig)
            let key = try #require(rig.pki).client.keyPEM
            let keyLines = key.split(separator: "\n").filter { !$0.hasPrefix("-----") }
            #expect(keyLines.count > 10)
            for line in keyLines { #expect(!visible.contains(line), "a line of the private key appeared") }
            #expect(!visible.contains("eyJ"), "an assertion or a token appeared")
            let stats = try await rig.simulator.stats()
            #expect(stats.tokenEndpoint.grantedWithAssertion == 2, "\(stats)")
        }
    }
}
