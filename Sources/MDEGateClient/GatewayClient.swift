import Foundation
import MDEGateTransport

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

    public func send(
        _ method: String, _ path: String, headers: [(name: String, value: String)] = [], body: [UInt8] = []
    ) async throws(TransportError) -> HTTPResponse {
        try await transport.send(HTTPRequest(method: method, url: "http://localhost\(path)", headers: headers, body: body))
    }

    public func shutdown() { transport.shutdown() }
}
