import Foundation
import Logging
import NIOCore
import NIOExtras
import NIOHTTP1
import NIOPosix
import ServiceLifecycle

/// The HTTP/1.1 server on the Unix socket: SwiftNIO parses and frames the messages,
/// `LocalAPIHandler` hands each request to `LocalAPI` and writes its answer.
///
/// Every connection lives on the gateway's own event loop, so a request reaches the gateway,
/// and its answer the socket, without a task or a thread in between (docs/architecture.md).
/// Keep-alive and pipelining as HTTP/1.1 allows (NIO's pipeline handler answers pipelined
/// requests in order).
public struct LocalAPIServer: Service {
    /// Where the server listens.
    public enum Listener: Sendable, CustomStringConvertible {
        /// A socket file the server binds itself (`socket.path`), with `mode` set on it: started
        /// directly, without systemd.
        case path(String, mode: mode_t)
        /// The socket systemd passed in (socket activation). Path, mode and group belong to the
        /// socket unit: the server neither changes nor removes the file.
        case inherited(ListeningSocket)

        public var description: String {
            switch self {
            case .path(let path, _): path
            case .inherited(let socket): socket.description
            }
        }
    }

    public let listener: Listener
    let api: LocalAPI
    let logger: Logger
    /// Called once the socket accepts connections (to log readiness, notify systemd, and so on).
    let onReady: @Sendable () async -> Void
    /// Called when shutdown begins: no new connections from here on.
    let onShutdown: @Sendable () -> Void

    /// The backlog of a socket the server binds itself.
    static let backlog: Int32 = 256

    public init(
        listener: Listener, api: LocalAPI, logger: Logger,
        onReady: @escaping @Sendable () async -> Void,
        onShutdown: @escaping @Sendable () -> Void = {}
    ) {
        self.listener = listener
        self.api = api
        self.logger = logger
        self.onReady = onReady
        self.onShutdown = onShutdown
    }

    public func run() async throws {
        let loop = api.gateway.eventLoop
        // On shutdown the helper closes idle keep-alive connections and lets answers being
        // written finish, so one idle client cannot keep the daemon alive.
        let quiescing = ServerQuiescingHelper(group: loop)
        let connections = OpenConnections()
        let api = self.api
        let logger = self.logger
        let bootstrap = ServerBootstrap(group: loop, childGroup: loop)
            .serverChannelOption(.backlog, value: Self.backlog)
            .serverChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(quiescing.makeServerChannelHandler(channel: channel))
                }
            }
            .childChannelInitializer { channel in
                PeerCredentials.read(from: channel).flatMapThrowing { peer in
                    connections.insert(channel)
                    try Self.configureConnection(channel.pipeline.syncOperations, api: api, peer: peer, logger: logger)
                }
            }

        let server: any Channel
        switch listener {
        case .path(let socketPath, let socketMode):
            try prepareSocketPath(socketPath)
            server = try await bootstrap.bind(unixDomainSocketPath: socketPath, cleanupExistingSocketFile: true).get()
            // NIO creates the socket file with the process umask; the mode decides who may connect.
            guard chmod(socketPath, socketMode) == 0 else {
                try? await server.close()
                throw DaemonError("cannot set socket.mode \(String(socketMode, radix: 8)) on \(socketPath): \(String(cString: strerror(errno)))")
            }
        case .inherited(let socket):
            // NIO takes the descriptor over (and closes it at the end; systemd keeps its own copy).
            server = try await bootstrap.withBoundSocket(socket.descriptor).get()
            // Adopting, NIO calls listen() again with its default backlog of 128, which would cut
            // the socket unit's deep Backlog= short; ask for the most again (the kernel caps it at
            // net.core.somaxconn, as systemd's default does).
            if listen(socket.descriptor, Int32.max) != 0 {
                logger.warning(
                    "cannot restore the backlog of the socket from systemd",
                    metadata: ["socket": "\(socket)", "error": "\(String(cString: strerror(errno)))"])
            }
        }
        await onReady()
        let stopped = loop.makePromise(of: Void.self)
        try await withTaskCancellationHandler {
            try await withGracefulShutdownHandler {
                // Ends when the quiescing helper has closed the server and every connection.
                try await stopped.futureResult.get()
            } onGracefulShutdown: {
                logger.notice("shutting down: no new connections; finishing answers in progress")
                onShutdown()
                quiescing.initiateShutdown(promise: stopped)
            }
        } onCancel: {
            // The graceful period is over (a caller still waiting for a queued request): close
            // what is left.
            server.close(promise: nil)
            connections.closeAll()
            stopped.succeed(())
        }
    }

    /// Sets up one accepted connection: NIOHTTP1's server pipeline (parsing, pipelining, a 400
    /// for bytes that are not HTTP) and `LocalAPIHandler` in front of `api`.
    ///
    /// Public so that the request fuzzer (Fuzz/, `make fuzz`) runs exactly the handlers a
    /// connection on the socket gets, on an in-memory channel.
    public static func configureConnection(
        _ pipeline: ChannelPipeline.SynchronousOperations, api: LocalAPI, peer: PeerCredentials, logger: Logger
    ) throws {
        try pipeline.configureHTTPServerPipeline(withErrorHandling: true)
        try pipeline.addHandler(LocalAPIHandler(api: api, peer: peer, logger: logger))
    }

    /// Creates the socket's directory if needed, and refuses to take over a socket another
    /// running mdegate still serves (NIO would otherwise silently unlink it).
    private func prepareSocketPath(_ socketPath: String) throws {
        let directory = (socketPath as NSString).deletingLastPathComponent
        if !directory.isEmpty {
            try? FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        }
        if isServed(socketPath) {
            throw DaemonError("another process is already serving \(socketPath) (socket.path); stop it or choose another path")
        }
    }
}

/// Whether something accepts connections on the Unix socket at `path`.
func isServed(_ path: String) -> Bool {
    let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { return false }
    defer { close(fd) }
    var address = sockaddr_un()
    address.sun_family = sa_family_t(AF_UNIX)
    let bytes = Array(path.utf8)
    guard bytes.count < MemoryLayout.size(ofValue: address.sun_path) else { return false }
    withUnsafeMutableBytes(of: &address.sun_path) { raw in
        raw.copyBytes(from: bytes)
    }
    let result = withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
            connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
        }
    }
    return result == 0
}

/// A start-up or runtime failure of the daemon that a person must read: what happened and
/// what to do.
public struct DaemonError: Error, CustomStringConvertible {
    public var description: String
    public init(_ description: String) { self.description = description }
}
