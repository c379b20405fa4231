import MDEGateTransport

/// Talks HTTP to one test process, through the project's own libcurl transport: over TCP to the
/// simulator, over the Unix socket to the gateway.
final class HTTPClient: Sendable {
    let baseURL: String
    private let transport: CurlTransport

    /// `baseURL` without a trailing slash, e.g. `http://localhost` for a Unix socket.
    init(baseURL: String, unixSocketPath: String? = nil, requestTimeout: Duration = .seconds(60)) throws {
        self.baseURL = baseURL
        transport = try CurlTransport(configuration: .init(
            connectTimeout: .seconds(5),
            requestTimeout: requestTimeout,
            // Enough connections that concurrent calls in a test are concurrent at the server.
            maxConcurrency: 64,
            unixSocketPath: unixSocketPath
        ))
    }

    /// One request; `path` starts with `/` and is sent as written (libcurl still resolves `..`).
    func send(
        _ method: String,
        _ path: String,
        headers: [(name: String, value: String)] = [],
        body: [UInt8] = []
    ) async throws -> HTTPResponse {
        try await transport.send(HTTPRequest(method: method, url: baseURL + path, headers: headers, body: body))
    }

    func get(_ path: String, headers: [(name: String, value: String)] = []) async throws -> HTTPResponse {
        try await send("GET", path, headers: headers)
    }

    func post(_ path: String, json: JSON, headers: [(name: String, value: String)] = []) async throws -> HTTPResponse {
        try await send("POST", path, headers: [("Content-Type", "application/json")] + headers, body: json.bytes)
    }

    func shutdown() {
        transport.shutdown()
    }
}

extension HTTPResponse {
    var text: String { String(decoding: body, as: UTF8.self) }

    /// The body as JSON; throws (showing the body) when it is not.
    func json() throws -> JSON {
        try JSON(parsing: body)
    }

    /// The `code` of an error answer in the upstream's shape `{"error":{"code":...}}`.
    var errorCode: String? {
        (try? json())?["error"]?["code"]?.string
    }

    /// A one-line summary for expectation messages.
    var summary: String {
        "HTTP \(status) \(text.prefix(500))"
    }
}
