import Foundation

/// Certificates and keys made at test time with the `openssl` command, in a directory of the
/// test's own: nothing secret is checked in, and nothing outlives the test.
///
/// - `ca`: a CA (self-signed), the file a gateway gets as `upstream.ca_file`;
/// - `server`: the simulator's HTTPS certificate for `127.0.0.1` and `localhost`, signed by `ca`;
/// - `client`: the app registration's certificate and RSA-2048 key, self-signed, like the one an
///   admin uploads to an Entra app registration;
/// - `otherClient`: an unrelated certificate and key of the same kind, for negative tests.
///
/// Keys are unencrypted PEM in PKCS #8 form (`-----BEGIN PRIVATE KEY-----`), OpenSSL 3's default.
struct TestPKI: Sendable {
    /// A certificate and its private key.
    struct Identity: Sendable {
        let certificatePath: String
        let keyPath: String
        /// The private key's PEM text, so a test can assert that it never appears in a log.
        let keyPEM: String
        /// Where this identity's files are; the JWT helpers put their scratch files here too.
        let directory: String
    }

    let directory: String
    let ca: Identity
    let server: Identity
    let client: Identity
    let otherClient: Identity

    /// The CA certificate to trust (`upstream.ca_file`, libcurl's CA file).
    var caFile: String { ca.certificatePath }

    /// Makes everything in `directory`, which must exist.
    init(directory: String) async throws {
        self.directory = directory
        ca = try await Self.selfSigned(
            "ca", subject: "/CN=mdegate test CA", in: directory,
            extensions: ["basicConstraints=critical,CA:TRUE", "keyUsage=critical,keyCertSign,cRLSign"])
        server = try await Self.server(signedBy: ca, in: directory)
        client = try await Self.selfSigned("client", subject: "/CN=mdegate test app", in: directory)
        otherClient = try await Self.selfSigned("other-client", subject: "/CN=some other app", in: directory)
    }

    private static func selfSigned(
        _ name: String, subject: String, in directory: String, extensions: [String] = []
    ) async throws -> Identity {
        let identity = try Identity(name: name, in: directory, readingKey: false)
        try await OpenSSL.run(
            ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", identity.keyPath, "-out", identity.certificatePath,
             "-days", "2", "-subj", subject] + extensions.flatMap { ["-addext", $0] })
        return try Identity(name: name, in: directory, readingKey: true)
    }

    private static func server(signedBy ca: Identity, in directory: String) async throws -> Identity {
        let identity = try Identity(name: "server", in: directory, readingKey: false)
        let request = "\(directory)/server.csr"
        let extensions = "\(directory)/server.ext"
        try """
            basicConstraints=critical,CA:FALSE
            keyUsage=critical,digitalSignature,keyEncipherment
            extendedKeyUsage=serverAuth
            subjectAltName=IP:127.0.0.1,DNS:localhost

            """.write(toFile: extensions, atomically: true, encoding: .utf8)
        try await OpenSSL.run(
            ["req", "-newkey", "rsa:2048", "-nodes", "-keyout", identity.keyPath, "-out", request, "-subj", "/CN=127.0.0.1"])
        let serial = "0x" + (0..<16).map { _ in String(Int.random(in: 0..<16), radix: 16) }.joined()
        try await OpenSSL.run(
            ["x509", "-req", "-in", request, "-CA", ca.certificatePath, "-CAkey", ca.keyPath, "-set_serial", serial,
             "-days", "2", "-extfile", extensions, "-out", identity.certificatePath])
        return try Identity(name: "server", in: directory, readingKey: true)
    }
}

extension TestPKI.Identity {
    fileprivate init(name: String, in directory: String, readingKey: Bool) throws {
        certificatePath = "\(directory)/\(name).pem"
        keyPath = "\(directory)/\(name).key"
        self.directory = directory
        keyPEM = readingKey ? try String(contentsOfFile: keyPath, encoding: .utf8) : ""
    }

    /// base64url(SHA-256(certificate DER)): the `x5t#S256` JWT header value, computed by openssl.
    func thumbprintSHA256() async throws -> String {
        try await thumbprint(digest: "-sha256")
    }

    /// base64url(SHA-1(certificate DER)): the older `x5t` JWT header value, computed by openssl.
    func thumbprintSHA1() async throws -> String {
        try await thumbprint(digest: "-sha1")
    }

    /// A compact JWS `base64url(header).base64url(claims).base64url(signature)`, signed RS256
    /// (RSASSA-PKCS1-v1_5 with SHA-256) with this identity's key by `openssl dgst -sha256 -sign`:
    /// an implementation independent of the gateway's, to check the simulator (and the gateway)
    /// against.
    func signedJWT(header: JSON, claims: JSON) async throws -> String {
        let signingInput = Base64URL.encode(header.bytes) + "." + Base64URL.encode(claims.bytes)
        let scratch = "\(directory)/jwt-\(randomSuffix())"
        defer {
            unlink("\(scratch).txt")
            unlink("\(scratch).sig")
        }
        try signingInput.write(toFile: "\(scratch).txt", atomically: true, encoding: .utf8)
        try await OpenSSL.run(["dgst", "-sha256", "-sign", keyPath, "-out", "\(scratch).sig", "\(scratch).txt"])
        let signature = try Data(contentsOf: URL(fileURLWithPath: "\(scratch).sig"))
        return signingInput + "." + Base64URL.encode(signature)
    }

    private func thumbprint(digest: String) async throws -> String {
        let scratch = "\(directory)/thumbprint-\(randomSuffix())"
        defer {
            unlink("\(scratch).der")
            unlink("\(scratch).bin")
        }
        try await OpenSSL.run(["x509", "-in", certificatePath, "-outform", "DER", "-out", "\(scratch).der"])
        try await OpenSSL.run(["dgst", digest, "-binary", "-out", "\(scratch).bin", "\(scratch).der"])
        return Base64URL.encode(try Data(contentsOf: URL(fileURLWithPath: "\(scratch).bin")))
    }
}

/// The `openssl` command (Debian's OpenSSL 3), run to completion.
enum OpenSSL {
    /// Runs `openssl arguments` and waits for it; throws with what openssl printed when it fails.
    static func run(_ arguments: [String]) async throws {
        guard let executable = executable else {
            throw HarnessError("the openssl command is not on PATH; install it (apt-get install openssl)")
        }
        let process = try await TestProcess(
            name: "openssl \(arguments.first ?? "")", executable: executable, arguments: arguments,
            environment: TestProcess.environment())
        let end = try await process.waitForExit(timeout: .seconds(60))
        guard end == .exited(0) else {
            let output = (process.lines(.stderr) + process.lines(.stdout)).suffix(40).joined(separator: "\n")
            throw HarnessError("openssl \(arguments.joined(separator: " ")) failed with \(end):\n\(output)")
        }
    }

    static let executable: URL? = {
        let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin"
        return path.split(separator: ":")
            .map { URL(fileURLWithPath: String($0)).appendingPathComponent("openssl") }
            .first { FileManager.default.isExecutableFile(atPath: $0.path) }
    }()
}

/// base64url without padding (RFC 4648 §5), the alphabet of JWTs and certificate thumbprints.
enum Base64URL {
    static func encode(_ bytes: some Sequence<UInt8>) -> String {
        Data(bytes).base64EncodedString()
            .replacingOccurrences(of: "+", with: "-")
            .replacingOccurrences(of: "/", with: "_")
            .replacingOccurrences(of: "=", with: "")
    }

    static func decode(_ text: String) -> [UInt8]? {
        var base64 = text.replacingOccurrences(of: "-", with: "+").replacingOccurrences(of: "_", with: "/")
        base64 += String(repeating: "=", count: (4 - base64.utf8.count % 4) % 4)
        return Data(base64Encoded: base64).map { [UInt8]($0) }
    }
}
