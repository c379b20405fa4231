import HTTPTypes
import Logging
import MDEGateConfig
import NIOCore
import NIOHTTP1
import NIOPosix
import ServiceLifecycle

/// The metrics over TCP (`metrics.address`), because Prometheus cannot scrape a Unix socket.
///
/// Read-only and small on purpose: `GET /metrics` and `GET /healthz`, nothing else, so opening
/// the port to a scraper never opens the quota to it. Its connections live on the gateway's
/// loop like the socket's, so a scrape reads the gateway's state without a hop.
public struct MetricsServer: Service {
    public let address: GatewayConfiguration.Metrics.Address
    private let channel: any Channel
    private let logger: Logger

    /// Binds the listener now, so that an address in use stops the start with a clear error
    /// instead of a daemon that looks ready and cannot be scraped.
    public static func bind(
        _ address: GatewayConfiguration.Metrics.Address, gateway: Gateway, logger: Logger
    ) async throws -> MetricsServer {
        let loop = gateway.eventLoop
        let bootstrap = ServerBootstrap(group: loop, childGroup: loop)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline(withErrorHandling: true)
                    try channel.pipeline.syncOperations.addHandler(
                        LocalAPIHandler(
                            respond: { request in gateway.onLoop { Self.answer(request, $0) } },
                            peer: PeerCredentials.overNetwork, logger: logger))
                }
            }
        let channel: any Channel
        do {
            channel = try await bootstrap.bind(host: address.host, port: address.port).get()
        } catch {
            throw DaemonError("cannot serve metrics on metrics.address \(address): \(error); choose a free address and port, or set it to \"\"")
        }
        return MetricsServer(address: address, channel: channel, logger: logger)
    }

    private init(address: GatewayConfiguration.Metrics.Address, channel: any Channel, logger: Logger) {
        self.address = address
        self.channel = channel
        self.logger = logger
    }

    /// Where it listens, as bound (the port chosen by the system when 0 was asked for).
    public var localAddress: SocketAddress? { channel.localAddress }

    public func run() async throws {
        logger.notice("serving metrics", metadata: ["url": "http://\(address)/metrics"])
        let channel = self.channel
        await withGracefulShutdownHandler {
            try? await channel.closeFuture.get()
        } onGracefulShutdown: {
            channel.close(promise: nil)
        }
    }

    /// The two read-only routes.
    private static func answer(_ request: LocalRequest, _ gateway: isolated Gateway) -> EventLoopFuture<LocalResponse> {
        let path = request.uri.split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false)[0]
        let response: LocalResponse
        switch path {
        case "/metrics", "/healthz":
            if request.method != "GET" {
                response = .plain(405, "only GET is served here\n", headers: [.allow: "GET"])
            } else if path == "/metrics" {
                response = LocalAPI.metrics(gateway)
            } else {
                response = .json(200, ["status": "ok"])
            }
        default:
            response = .plain(404, "only /metrics and /healthz are served here\n")
        }
        return gateway.eventLoop.makeSucceededFuture(response)
    }
}

extension PeerCredentials {
    /// A TCP peer has no credentials; the metrics routes never read them.
    static let overNetwork = PeerCredentials(pid: 0, uid: .max, gid: .max)
}

extension LocalResponse {
    static func plain(_ status: Int, _ text: String, headers: HTTPFields = [:]) -> LocalResponse {
        LocalResponse(
            status: status, headers: [.contentType: "text/plain; charset=utf-8"] + headers, body: Array(text.utf8))
    }
}
