import Foundation
import HTTPTypes
import MDEGateTransport

/// Talks HTTP to one test process, through the project's own libcurl transport: over TCP (HTTP or
/// HTTPS) to the simulator, over the Unix socket to the gateway.
///
/// Certificate checks stay on, as in the gateway: without the right `caFile`, an HTTPS request
/// fails with `TransportError.Kind.tls`.
final class HTTPClient: Sendable {
    let baseURL: String
    private let transport: CurlTransport

    /// `baseURL` without a trailing slash, e.g. `http://localhost` for a Unix socket or
    /// `https://127.0.0.1:8443`; `caFile` is trusted besides the system's CAs, `proxy` carries
    /// every request.
    init(
        baseURL: String, unixSocketPath: String? = nil, caFile: String? = nil, proxy: String? = nil,
        requestTimeout: Duration = .seconds(60)
    ) throws {
        self.baseURL = baseURL
        transport = try CurlTransport(configuration: .init(
            // A sanitizer build's simulator can take seconds for a TLS handshake.
            connectTimeout: HarnessTime.scaled(.seconds(5)),
            requestTimeout: requestTimeout,
            // Enough connections that concurrent calls in a test are concurrent at the server.
            maxConcurrency: 64,
            caFile: caFile,
            proxy: proxy,
            unixSocketPath: unixSocketPath
        ))
    }

    /// One request; `path` starts with `/` and is sent as written (libcurl still resolves `..`).
    func send(
        _ method: String,
        _ path: String,
        headers: HTTPFields = [:],
        body: [UInt8] = []
    ) async throws -> TransportResponse {
        try await transport.send(TransportRequest(method: method, url: baseURL + path, headers: headers, body: body))
    }

    func get(_ path: String, headers: HTTPFields = [:]) async throws -> TransportResponse {
        try await send("GET", path, headers: headers)
    }

    func post(_ path: String, json: JSON, headers: HTTPFields = [:]) async throws -> TransportResponse {
        var all: HTTPFields = [.contentType: "application/json"]
        all.append(contentsOf: headers)
        return try await send("POST", path, headers: all, body: json.bytes)
    }

    /// An `application/x-www-form-urlencoded` POST, as token requests are sent.
    func postForm(_ path: String, fields: [(name: String, value: String)]) async throws -> TransportResponse {
        let body = fields.map { "\(Self.formEncoded($0.name))=\(Self.formEncoded($0.value))" }.joined(separator: "&")
        return try await send(
            "POST", path, headers: [.contentType: "application/x-www-form-urlencoded"], body: Array(body.utf8))
    }

    func shutdown() {
        transport.shutdown()
    }

    /// Percent-encodes everything but RFC 3986's unreserved characters.
    private static func formEncoded(_ text: String) -> String {
        let unreserved = CharacterSet(charactersIn: "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
        return text.addingPercentEncoding(withAllowedCharacters: unreserved) ?? text
    }
}

extension TransportResponse {
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
