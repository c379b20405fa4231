import Foundation
import HTTPTypes
import MDEGateTransport
import MDEGateWire

/// A tool talking to the gateway over its Unix socket, as every real client does.
final class GatewayClient: Sendable {
    let http: HTTPClient
    let socketPath: String

    init(socketPath: String) throws {
        self.socketPath = socketPath
        http = try HTTPClient(baseURL: "http://localhost", unixSocketPath: socketPath)
    }

    static func cancelPath(_ id: String) -> String {
        "/api/machineactions/\(id)/cancel"
    }

    /// `POST /api/machineactions/{id}/cancel` with `{"Comment": comment}`; `client` becomes the
    /// `Mdegate-Client` header and `prefer` the `Prefer` header.
    func cancel(
        _ id: String,
        comment: String = "cancelled by the integration tests",
        client: String? = nil,
        prefer: String? = nil,
        headers: HTTPFields = [:]
    ) async throws -> TransportResponse {
        try await cancel(id, body: JSON.object(["Comment": .string(comment)]).bytes, client: client, prefer: prefer, headers: headers)
    }

    /// The same call with a body of the test's choosing (which need not be JSON).
    func cancel(
        _ id: String,
        body: [UInt8],
        client: String? = nil,
        prefer: String? = nil,
        headers: HTTPFields = [:]
    ) async throws -> TransportResponse {
        var all: HTTPFields = [.contentType: "application/json"]
        if let client { all[.mdegateClient] = client }
        if let prefer { all[.prefer] = prefer }
        all.append(contentsOf: headers)
        return try await http.send("POST", Self.cancelPath(id), headers: all, body: body)
    }

    /// `GET /v1/requests/{rid}`, which must answer 200 with the record.
    func record(_ rid: String) async throws -> JSON {
        let response = try await http.get("/v1/requests/\(rid)")
        guard response.status == 200 else { throw HarnessError("GET /v1/requests/\(rid): \(response.summary)") }
        return try response.json()
    }

    /// `GET /metrics`, which must answer 200 with Prometheus's text format, parsed.
    func metrics() async throws -> Exposition {
        let response = try await http.get("/metrics")
        guard response.status == 200 else { throw HarnessError("GET /metrics: \(response.summary)") }
        return try Exposition(String(decoding: response.body, as: UTF8.self))
    }

    /// `GET /v1/status`, which must answer 200 with the status document.
    func status() async throws -> JSON {
        let response = try await http.get("/v1/status")
        guard response.status == 200 else { throw HarnessError("GET /v1/status: \(response.summary)") }
        return try response.json()
    }

    /// The record once the request has finished (`done`, `failed` or `withdrawn`), asked for in a
    /// bounded loop: the API has no way to wait for a record.
    func finishedRecord(_ rid: String, timeout: Duration = .seconds(30)) async throws -> JSON {
        try await eventually("request \(rid) to finish", timeout: timeout, { try await self.record(rid) }) { record in
            ["done", "failed", "withdrawn"].contains(record["state"]?.string ?? "")
        }
    }

    func shutdown() {
        http.shutdown()
    }
}

/// The request id of an answer: the `Mdegate-Request-Id` header.
extension TransportResponse {
    var requestID: String? { header("Mdegate-Request-Id") }
}
