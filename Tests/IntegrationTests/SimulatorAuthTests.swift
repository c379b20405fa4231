import Foundation
import MDEGateTransport
import Testing

/// The simulator's HTTPS, its token endpoint's secret and certificate credentials, the auth
/// faults, and the loopback proxy: the ground the gateway's auth, TLS and proxy tests stand on.
///
/// Client assertions here are built with the `openssl` command, independently of the gateway's
/// Swift implementation, so each side is checked against something it does not share.
@Suite("Simulator: HTTPS, certificate credentials, auth faults and the CONNECT proxy", .timeLimit(.minutes(HarnessTime.suiteMinutes)))
struct SimulatorAuthTests {
    // MARK: HTTPS

    @Test("over HTTPS the simulator is trusted through the test CA, and refused with a certificate error without it")
    func httpsNeedsTheTestCA() async throws {
        try await withSimulator { simulator, _ in
            #expect(simulator.baseURL.hasPrefix("https://"))
            let stats = try await simulator.client.get("/_sim/stats")
            #expect(stats.status == 200, "\(stats.summary)")

            // The certificate names localhost too.
            let byName = try HTTPClient(baseURL: "https://localhost:\(simulator.port)", caFile: simulator.caFile)
            defer { byName.shutdown() }
            #expect(try await byName.get("/_sim/stats").status == 200)

            let untrusting = try HTTPClient(baseURL: simulator.baseURL)
            defer { untrusting.shutdown() }
            let error = await #expect(throws: TransportError.self) { try await untrusting.get("/_sim/stats") }
            #expect(error?.kind == .tls, "\(String(describing: error))")
        }
    }

    @Test("a TLS key that does not fit the certificate stops the simulator with a message naming --tls-key")
    func mismatchedTLSKey() async throws {
        try await sharingTheMachine {
            let directory = try TemporaryDirectory()
            defer { directory.remove() }
            let pki = try await TestPKI(directory: directory.path)
            let process = try await TestProcess(
                name: "mde-simulator",
                executable: Binaries.simulator,
                arguments: ["--port", "0", "--tls-certificate", pki.server.certificatePath, "--tls-key", pki.client.keyPath],
                environment: TestProcess.environment())
            let end = try await process.waitForExit()
            #expect(end != .exited(0))
            let stderr = process.lines(.stderr).joined(separator: "\n")
            #expect(stderr.contains("--tls-key \(pki.client.keyPath)"), "\(stderr)")
        }
    }

    // MARK: Credentials

    @Test("the client secret is granted a token that the API accepts")
    func secretGrant() async throws {
        try await withSimulator { simulator, _ in
            let token = try await simulator.issueToken()
            let answer = try await simulator.cancel(machineActionID(), bearer: token)
            #expect(answer.status == 200, "\(answer.summary)")

            let wrong = try await simulator.requestToken(
                simulator.secretGrantFields.map { $0.name == "client_secret" ? ($0.name, "not-the-secret") : $0 })
            #expect(wrong.status == 401, "\(wrong.summary)")
            #expect(try wrong.json()["error_codes"]?[0]?.int == 7000215, "\(wrong.summary)")

            let stats = try await simulator.stats()
            #expect(stats.tokenEndpoint.grantedWithSecret == 1, "\(stats)")
            #expect(stats.tokenEndpoint.refused(code: 7000215) == 1, "\(stats)")
        }
    }

    @Test("an assertion signed with the registered key is granted, named by x5t#S256 or by x5t")
    func assertionGrant() async throws {
        try await withSimulator { simulator, pki in
            let bySHA256 = try await pki.client.signedJWT(
                header: ["alg": "RS256", "typ": "JWT", "x5t#S256": .string(try await pki.client.thumbprintSHA256())],
                claims: assertionClaims(for: simulator))
            let granted = try await simulator.requestToken(simulator.assertionGrantFields(assertion: bySHA256))
            #expect(granted.status == 200, "\(granted.summary)")
            let token = try #require(try granted.json()["access_token"]?.string)
            let answer = try await simulator.cancel(machineActionID(), bearer: token)
            #expect(answer.status == 200, "\(answer.summary)")

            let bySHA1 = try await pki.client.signedJWT(
                header: ["alg": "RS256", "x5t": .string(try await pki.client.thumbprintSHA1())],
                claims: assertionClaims(for: simulator))
            let alsoGranted = try await simulator.requestToken(simulator.assertionGrantFields(assertion: bySHA1))
            #expect(alsoGranted.status == 200, "\(alsoGranted.summary)")

            let stats = try await simulator.stats()
            #expect(stats.tokenEndpoint.grantedWithAssertion == 2, "\(stats)")
            #expect(stats.tokenEndpoint.replayedJtis == 0)
        }
    }

    @Test("assertions that break a rule are refused with the identity platform's status and AADSTS code")
    func assertionRefusals() async throws {
        try await withSimulator { simulator, pki in
            let registered = try await pki.client.thumbprintSHA256()
            let unregistered = try await pki.otherClient.thumbprintSHA256()
            let header: JSON = ["alg": "RS256", "typ": "JWT", "x5t#S256": .string(registered)]
            let now = Int(Date().timeIntervalSince1970)

            struct Case {
                var name: String
                var assertion: String
                var status: Int
                var code: Int
            }
            var cases = [
                Case(name: "signed with another key than the named certificate's",
                     assertion: try await pki.otherClient.signedJWT(header: header, claims: assertionClaims(for: simulator)),
                     status: 401, code: 700027),
                Case(name: "signed with an unregistered certificate",
                     assertion: try await pki.otherClient.signedJWT(
                        header: ["alg": "RS256", "x5t#S256": .string(unregistered)], claims: assertionClaims(for: simulator)),
                     status: 401, code: 700027),
                Case(name: "a thumbprint that names no certificate",
                     assertion: try await pki.client.signedJWT(
                        header: ["alg": "RS256", "x5t#S256": .string(Base64URL.encode([UInt8](repeating: 7, count: 32)))],
                        claims: assertionClaims(for: simulator)),
                     status: 401, code: 700027),
                Case(name: "no thumbprint at all",
                     assertion: try await pki.client.signedJWT(header: ["alg": "RS256"], claims: assertionClaims(for: simulator)),
                     status: 401, code: 700027),
                Case(name: "expired",
                     assertion: try await pki.client.signedJWT(
                        header: header, claims: assertionClaims(for: simulator, notBefore: now - 600, expires: now - 60)),
                     status: 401, code: 700024),
                Case(name: "not valid yet",
                     assertion: try await pki.client.signedJWT(
                        header: header, claims: assertionClaims(for: simulator, notBefore: now + 600, expires: now + 900)),
                     status: 401, code: 700024),
                Case(name: "valid for more than an hour",
                     assertion: try await pki.client.signedJWT(
                        header: header, claims: assertionClaims(for: simulator, expires: now + 7200)),
                     status: 401, code: 700024),
                Case(name: "meant for another token endpoint",
                     assertion: try await pki.client.signedJWT(
                        header: header,
                        claims: assertionClaims(for: simulator, audience: "https://login.microsoftonline.com/\(simulator.tenant)/oauth2/v2.0/token")),
                     status: 401, code: 50012),
                Case(name: "issued by another app",
                     assertion: try await pki.client.signedJWT(header: header, claims: assertionClaims(for: simulator, issuer: "another-app")),
                     status: 401, code: 700021),
                Case(name: "without a jti",
                     assertion: try await pki.client.signedJWT(header: header, claims: assertionClaims(for: simulator, jti: nil)),
                     status: 400, code: 90014),
                Case(name: "alg HS256",
                     assertion: try await pki.client.signedJWT(
                        header: ["alg": "HS256", "x5t#S256": .string(registered)], claims: assertionClaims(for: simulator)),
                     status: 400, code: 5002738),
                Case(name: "not a JWT", assertion: "not.a-jwt", status: 400, code: 50027),
            ]
            // The signature covers the claims: change one after signing.
            let signed = try await pki.client.signedJWT(header: header, claims: assertionClaims(for: simulator))
            let parts = signed.split(separator: ".").map(String.init)
            let tampered = Base64URL.encode(assertionClaims(for: simulator, issuer: simulator.clientId, jti: "tampered").bytes)
            cases.append(Case(name: "claims changed after signing", assertion: "\(parts[0]).\(tampered).\(parts[2])", status: 401, code: 700027))

            for check in cases {
                let answer = try await simulator.requestToken(simulator.assertionGrantFields(assertion: check.assertion))
                #expect(answer.status == check.status, "\(check.name): \(answer.summary)")
                let body = try answer.json()
                #expect(body["error_codes"]?[0]?.int == check.code, "\(check.name): \(answer.summary)")
                #expect(body["error_description"]?.string?.hasPrefix("AADSTS\(check.code): ") == true, "\(check.name): \(answer.summary)")
            }

            let stats = try await simulator.stats()
            #expect(stats.tokenEndpoint.granted == 0, "\(stats)")
            #expect(stats.tokenEndpoint.refused == cases.count, "\(stats)")
        }
    }

    @Test("an assertion is granted once: presenting its jti again is refused as a replay")
    func replayedAssertion() async throws {
        try await withSimulator { simulator, pki in
            let assertion = try await pki.client.signedJWT(
                header: ["alg": "RS256", "x5t#S256": .string(try await pki.client.thumbprintSHA256())],
                claims: assertionClaims(for: simulator))
            let first = try await simulator.requestToken(simulator.assertionGrantFields(assertion: assertion))
            #expect(first.status == 200, "\(first.summary)")
            let replay = try await simulator.requestToken(simulator.assertionGrantFields(assertion: assertion))
            #expect(replay.status == 401, "\(replay.summary)")
            #expect(try replay.json()["error_codes"]?[0]?.int == 50013, "\(replay.summary)")
            #expect(try await simulator.stats().tokenEndpoint.replayedJtis == 1)
        }
    }

    @Test("a request must present exactly one credential of a kind the endpoint knows")
    func oneCredential() async throws {
        try await withSimulator { simulator, pki in
            let assertion = try await pki.client.signedJWT(
                header: ["alg": "RS256", "x5t#S256": .string(try await pki.client.thumbprintSHA256())],
                claims: assertionClaims(for: simulator))
            let fields = simulator.assertionGrantFields(assertion: assertion)

            let both = try await simulator.requestToken(fields + [("client_secret", simulator.clientSecret)])
            #expect(both.status == 400, "\(both.summary)")
            #expect(try both.json()["error_codes"]?[0]?.int == 90023, "\(both.summary)")

            let neither = try await simulator.requestToken(fields.filter { !$0.name.hasPrefix("client_assertion") })
            #expect(neither.status == 401, "\(neither.summary)")
            #expect(try neither.json()["error_codes"]?[0]?.int == 7000218, "\(neither.summary)")

            let otherType = try await simulator.requestToken(
                fields.map { $0.name == "client_assertion_type" ? ($0.name, "urn:ietf:params:oauth:client-assertion-type:saml2-bearer") : $0 })
            #expect(otherType.status == 400, "\(otherType.summary)")
            #expect(try otherType.json()["error_codes"]?[0]?.int == 90011, "\(otherType.summary)")
        }
    }

    @Test("without a registered certificate, even a well-signed assertion is refused")
    func noRegisteredCertificate() async throws {
        try await withSimulator(registerClientCertificate: false) { simulator, pki in
            let assertion = try await pki.client.signedJWT(
                header: ["alg": "RS256", "x5t#S256": .string(try await pki.client.thumbprintSHA256())],
                claims: assertionClaims(for: simulator))
            let answer = try await simulator.requestToken(simulator.assertionGrantFields(assertion: assertion))
            #expect(answer.status == 401, "\(answer.summary)")
            #expect(try answer.json()["error_codes"]?[0]?.int == 700027, "\(answer.summary)")
        }
    }

    // MARK: Faults

    @Test("a login outage answers 503 (or drops the connection) until it is cleared")
    func loginOutage() async throws {
        try await withSimulator { simulator, _ in
            try await simulator.setTokenOutage(.serviceUnavailable)
            let unavailable = try await simulator.requestToken(simulator.secretGrantFields)
            #expect(unavailable.status == 503, "\(unavailable.summary)")
            #expect(try unavailable.json()["error"]?.string == "temporarily_unavailable", "\(unavailable.summary)")

            try await simulator.setTokenOutage(.drop)
            let error = await #expect(throws: TransportError.self) { try await simulator.requestToken(simulator.secretGrantFields) }
            #expect(error?.kind == .connectionFailed, "\(String(describing: error))")

            try await simulator.setTokenOutage(.none)
            let granted = try await simulator.requestToken(simulator.secretGrantFields)
            #expect(granted.status == 200, "\(granted.summary)")

            let stats = try await simulator.stats()
            #expect(stats.tokenEndpoint.outages == 2, "\(stats)")
            #expect(stats.tokenEndpoint.granted == 1, "\(stats)")
            #expect(stats.tokenRequests == 3, "\(stats)")
        }
    }

    @Test("revoking makes every issued token answer 401 with WWW-Authenticate: Bearer; the fixed token and new tokens still work")
    func revokedTokens() async throws {
        try await withSimulator { simulator, _ in
            let token = try await simulator.issueToken()
            #expect(try await simulator.cancel(machineActionID(), bearer: token).status == 200)

            #expect(try await simulator.revokeTokens() == 1)
            let refused = try await simulator.cancel(machineActionID(), bearer: token)
            #expect(refused.status == 401, "\(refused.summary)")
            #expect(refused.errorCode == "Unauthorized", "\(refused.summary)")
            #expect(refused.header("WWW-Authenticate") == "Bearer", "\(refused.summary)")
            #expect(refused.text.contains("revoked"), "\(refused.summary)")

            #expect(try await simulator.cancel(machineActionID()).status == 200, "the fixed --token stays valid")
            let fresh = try await simulator.issueToken()
            #expect(try await simulator.cancel(machineActionID(), bearer: fresh).status == 200)
        }
    }

    @Test("started with --token \"\", the API accepts issued tokens only")
    func noFixedToken() async throws {
        try await sharingTheMachine {
            let simulator = try await SimulatorProcess(token: "")
            do {
                let refused = try await simulator.cancel(machineActionID(), bearer: "")
                #expect(refused.status == 401, "\(refused.summary)")
                let issued = try await simulator.cancel(machineActionID(), bearer: try await simulator.issueToken())
                #expect(issued.status == 200, "\(issued.summary)")
            } catch {
                await simulator.stop()
                throw error
            }
            await simulator.stop()
        }
    }

    @Test("a 429 can carry Retry-After as an HTTP-date, once")
    func retryAfterDate() async throws {
        try await withSimulator(tls: false) { simulator, _ in
            try await simulator.setFaults(["next429RetryAfterDate": ["count": 1, "retryAfter": 120]])
            let throttled = try await simulator.cancel(machineActionID())
            #expect(throttled.status == 429, "\(throttled.summary)")
            let value = try #require(throttled.header("Retry-After"))
            let formatter = DateFormatter()
            formatter.locale = Locale(identifier: "en_US_POSIX")
            formatter.timeZone = TimeZone(identifier: "GMT")
            formatter.dateFormat = "EEE, dd MMM yyyy HH:mm:ss 'GMT'"
            let date = try #require(formatter.date(from: value), "not an IMF-fixdate: \(value)")
            #expect(date > Date(), "a date in the future: \(value)")

            #expect(try await simulator.cancel(machineActionID()).status == 200, "one-shot")
        }
    }

    @Test("token requests in flight at once are counted, so single-flight can be proven")
    func tokenRequestsInFlight() async throws {
        try await withSimulator(tls: false) { simulator, _ in
            // Long enough that the answers never come during the test: the requests are cancelled.
            try await simulator.setTokenDelay(.seconds(120))
            try await withThrowingTaskGroup(of: Void.self) { group in
                for _ in 0..<2 {
                    group.addTask { _ = try? await simulator.requestToken(simulator.secretGrantFields) }
                }
                let stats = try await eventually("two token requests in flight", { try await simulator.stats() }) {
                    $0.tokenEndpoint.inFlight == 2
                }
                #expect(stats.tokenEndpoint.maxInFlight == 2, "\(stats)")
                group.cancelAll()
            }
        }
    }

    // MARK: The proxy

    @Test("the CONNECT proxy carries an HTTPS call to the simulator through one tunnel")
    func proxyTunnel() async throws {
        try await withSimulator { simulator, _ in
            try await withConnectProxy { proxy in
                let client = try HTTPClient(baseURL: simulator.baseURL, caFile: simulator.caFile, proxy: proxy.url)
                defer { client.shutdown() }
                let answer = try await client.postForm(simulator.tokenPath, fields: simulator.secretGrantFields)
                #expect(answer.status == 200, "\(answer.summary)")
                #expect(proxy.tunnels(to: simulator.authority) == 1, "\(proxy.traffic)")
                #expect(proxy.traffic.forwarded.isEmpty, "\(proxy.traffic)")
            }
        }
    }

    @Test("the proxy forwards a plain-HTTP request with its body, and refuses what is not a proxy request")
    func proxyForward() async throws {
        try await withSimulator(tls: false) { simulator, _ in
            try await withConnectProxy { proxy in
                let client = try HTTPClient(baseURL: simulator.baseURL, proxy: proxy.url)
                defer { client.shutdown() }
                let answer = try await client.postForm(simulator.tokenPath, fields: simulator.secretGrantFields)
                #expect(answer.status == 200, "\(answer.summary)")
                #expect(proxy.forwarded(to: simulator.authority) == 1, "\(proxy.traffic)")
                #expect(try await simulator.stats().tokenEndpoint.grantedWithSecret == 1)

                let direct = try HTTPClient(baseURL: proxy.url)
                defer { direct.shutdown() }
                let refused = try await direct.get("/")
                #expect(refused.status == 405, "\(refused.summary)")
                #expect(proxy.traffic.refused == 1, "\(proxy.traffic)")
            }
        }
    }
}

// MARK: Helpers

/// Runs `body` with a fresh PKI and a simulator (HTTPS unless `tls` is false, with the PKI's
/// client certificate registered unless told otherwise), then stops it and removes the files.
private func withSimulator<T>(
    tls: Bool = true,
    registerClientCertificate: Bool = true,
    _ body: (SimulatorProcess, TestPKI) async throws -> T
) async throws -> T {
    try await sharingTheMachine {
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        let pki = try await TestPKI(directory: directory.path)
        let simulator = try await SimulatorProcess(
            tls: tls ? pki : nil,
            clientCertificates: registerClientCertificate ? [pki.client.certificatePath] : [])
        do {
            let value = try await body(simulator, pki)
            await simulator.stop()
            return value
        } catch {
            FileHandle.standardError.write(Data((simulator.process.diagnostics() + "\n").utf8))
            await simulator.stop()
            throw error
        }
    }
}

/// The claims of a client assertion for `simulator`'s token endpoint; each parameter can be
/// set to break one rule. Times are whole seconds since the epoch; `jti` nil leaves it out.
private func assertionClaims(
    for simulator: SimulatorProcess,
    audience: String? = nil,
    issuer: String? = nil,
    notBefore: Int? = nil,
    expires: Int? = nil,
    jti: String? = UUID().uuidString
) -> JSON {
    let now = Int(Date().timeIntervalSince1970)
    var claims: [String: JSON] = [
        "aud": .string(audience ?? simulator.tokenURL),
        "iss": .string(issuer ?? simulator.clientId),
        "sub": .string(issuer ?? simulator.clientId),
        "nbf": .number(Double(notBefore ?? now)),
        "exp": .number(Double(expires ?? now + 600)),
    ]
    if let jti { claims["jti"] = .string(jti) }
    return .object(claims)
}
