import Foundation
import HTTPTypes
import MDEGateTransport
import MDEGateWire

/// The command line's view of a running gateway: HTTP over its Unix socket, through the same
/// libcurl transport the daemon uses upstream.
public struct GatewayClient: Sendable {
    /// The socket clients use when neither `--socket` nor `MDEGATE_SOCKET` says otherwise.
    public static let defaultSocketPath = "/run/mdegate/mdegate.sock"

    public let socketPath: String
    let transport: CurlTransport

    /// `--socket`, else `$MDEGATE_SOCKET`, else the default path.
    public static func socketPath(option: String?, environment: [String: String] = ProcessInfo.processInfo.environment)
        -> String
    {
        if let option, !option.isEmpty { return option }
        if let fromEnvironment = environment["MDEGATE_SOCKET"], !fromEnvironment.isEmpty { return fromEnvironment }
        return defaultSocketPath
    }

    public init(socketPath: String, requestTimeout: Duration = .seconds(86_400)) throws {
        self.socketPath = socketPath
        transport = try CurlTransport(
            configuration: .init(
                connectTimeout: .seconds(5), requestTimeout: requestTimeout, maxConcurrency: 1,
                unixSocketPath: socketPath))
    }

    /// Sends any request to the gateway; `path` is already percent-encoded (see `encodedSegment`).
    public func send(
        _ method: String, _ path: String, headers: HTTPFields = [:], body: [UInt8] = []
    ) async throws(TransportError) -> TransportResponse {
        try await transport.send(TransportRequest(method: method, url: "http://localhost\(path)", headers: headers, body: body))
    }

    /// Sends a call of the machine-action family (any method, path and body) with the headers a
    /// caller of the local API sets: `Content-Type` when there is a body, `Prefer` as `answer`
    /// asks, and `Mdegate-Client` when the caller names itself.
    public func send(
        _ method: String, _ path: String, body: [UInt8], answer: Preference, client: String?
    ) async throws(TransportError) -> TransportResponse {
        try await send(method, path, headers: Self.headers(body: body, answer: answer, client: client), body: body)
    }

    /// The headers of `send(_:_:body:answer:client:)`, in the order they are sent.
    public static func headers(body: [UInt8], answer: Preference, client: String?) -> HTTPFields {
        var headers = HTTPFields()
        if !body.isEmpty { headers[.contentType] = "application/json" }
        if let prefer = answer.headerValue { headers[.prefer] = prefer }
        if let client { headers[.mdegateClient] = client }
        return headers
    }

    public func shutdown() { transport.shutdown() }

    // MARK: Percent-encoding

    /// RFC 3986's unreserved characters: everything else in a path segment is percent-encoded,
    /// so a `/`, `?` or `%` in an id stays part of the id.
    private static let unreserved = CharacterSet(
        charactersIn: "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~")

    /// `value` as one path segment.
    public static func encodedSegment(_ value: String) -> String {
        value.addingPercentEncoding(withAllowedCharacters: unreserved) ?? value
    }
}

/// How a caller wants to be answered: the local API's `Prefer` header.
public enum Preference: Sendable, Equatable {
    /// When the upstream has answered (no `Prefer` header).
    case final
    /// At once, with `202 Accepted` and the stored record (`Prefer: respond-async`).
    case respondAsync
    /// When the upstream has answered, or after this many seconds with a 202 (`Prefer: wait=N`).
    case wait(seconds: Double)

    /// The `Prefer` header's value, nil for `.final`.
    public var headerValue: String? {
        switch self {
        case .final: nil
        case .respondAsync: "respond-async"
        case .wait(let seconds):
            seconds.rounded() == seconds && seconds < 1e15 ? "wait=\(Int64(seconds))" : "wait=\(seconds)"
        }
    }
}
