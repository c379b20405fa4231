import Foundation
import Logging
import NIOCore
import NIOExtras
import NIOHTTP1
import NIOPosix
import ServiceLifecycle

/// The HTTP/1.1 server on the Unix socket: SwiftNIO parses and frames the messages, `LocalAPI`
/// answers them. One task per connection; keep-alive and pipelining as HTTP/1.1 allows.
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
    let group: any EventLoopGroup
    let logger: Logger
    /// Called once the socket accepts connections (to log readiness, notify systemd, and so on).
    let onReady: @Sendable () async -> Void
    /// Called when shutdown begins: no new connections from here on.
    let onShutdown: @Sendable () -> Void

    /// The backlog of a socket the server binds itself.
    static let backlog: Int32 = 256

    public init(
        listener: Listener, api: LocalAPI, group: any EventLoopGroup, logger: Logger,
        onReady: @escaping @Sendable () async -> Void,
        onShutdown: @escaping @Sendable () -> Void = {}
    ) {
        self.listener = listener
        self.api = api
        self.group = group
        self.logger = logger
        self.onReady = onReady
        self.onShutdown = onShutdown
    }

    public func run() async throws {
        // On shutdown the helper closes idle keep-alive connections and lets answers being
        // written finish, so one idle client cannot keep the daemon alive.
        let quiescing = ServerQuiescingHelper(group: group)
        let bootstrap = ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: Self.backlog)
            .serverChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(quiescing.makeServerChannelHandler(channel: channel))
                }
            }
        let accept: @Sendable (any Channel) -> EventLoopFuture<Connection> = { channel in
            PeerCredentials.read(from: channel).flatMapThrowing { peer in
                try channel.pipeline.syncOperations.configureHTTPServerPipeline(withErrorHandling: true)
                let connection = try NIOAsyncChannel<HTTPServerRequestPart, HTTPServerResponsePart>(
                    wrappingChannelSynchronously: channel)
                return Connection(channel: connection, peer: peer)
            }
        }

        let server: NIOAsyncChannel<Connection, Never>
        switch listener {
        case .path(let socketPath, let socketMode):
            try prepareSocketPath(socketPath)
            server = try await bootstrap.bind(unixDomainSocketPath: socketPath, cleanupExistingSocketFile: true, childChannelInitializer: accept)
            // NIO creates the socket file with the process umask; the mode decides who may connect.
            guard chmod(socketPath, socketMode) == 0 else {
                throw DaemonError("cannot set socket.mode \(String(socketMode, radix: 8)) on \(socketPath): \(String(cString: strerror(errno)))")
            }
        case .inherited(let socket):
            // NIO takes the descriptor over (and closes it at the end; systemd keeps its own copy).
            server = try await bootstrap.bind(socket.descriptor, childChannelInitializer: accept)
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
        try await withGracefulShutdownHandler {
            try await withThrowingDiscardingTaskGroup { group in
                try await server.executeThenClose { connections in
                    for try await connection in connections {
                        group.addTask { await self.serve(connection) }
                    }
                }
            }
        } onGracefulShutdown: {
            logger.notice("shutting down: no new connections; finishing answers in progress")
            onShutdown()
            quiescing.initiateShutdown(promise: nil)
        }
    }

    struct Connection: Sendable {
        var channel: NIOAsyncChannel<HTTPServerRequestPart, HTTPServerResponsePart>
        var peer: PeerCredentials
    }

    private func serve(_ connection: Connection) async {
        do {
            try await connection.channel.executeThenClose { inbound, outbound in
                var head: HTTPRequestHead?
                var body: [UInt8] = []
                var tooLarge = false
                for try await part in inbound {
                    switch part {
                    case .head(let requestHead):
                        head = requestHead
                        body.removeAll(keepingCapacity: true)
                        tooLarge = false
                    case .body(let buffer):
                        if body.count + buffer.readableBytes > LocalAPI.maxBodyBytes {
                            tooLarge = true
                            body.removeAll()
                        } else if !tooLarge {
                            body.append(contentsOf: buffer.readableBytesView)
                        }
                    case .end:
                        guard let requestHead = head else { continue }
                        let request = LocalRequest(
                            method: requestHead.method.rawValue, uri: requestHead.uri,
                            headers: requestHead.headers.map { ($0.name, $0.value) },
                            body: body, bodyTooLarge: tooLarge, peer: connection.peer)
                        let response = await api.handle(request)
                        var headers = HTTPHeaders(response.headers.map { ($0.name, $0.value) })
                        headers.replaceOrAdd(name: "Content-Length", value: String(response.body.count))
                        let keepAlive = requestHead.isKeepAlive
                        if !keepAlive { headers.replaceOrAdd(name: "Connection", value: "close") }
                        // One hand-over to the event loop (and one flush) for the whole answer.
                        try await outbound.write(contentsOf: [
                            .head(HTTPResponseHead(version: requestHead.version, status: .init(statusCode: response.status), headers: headers)),
                            .body(.byteBuffer(ByteBuffer(bytes: response.body))),
                            .end(nil),
                        ])
                        head = nil
                        if !keepAlive { return }
                    }
                }
            }
        } catch {
            logger.debug("connection ended", metadata: ["error": "\(error)"])
        }
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
