import Foundation
import NIOCore
import NIOPosix
import Synchronization

/// A loopback TCP port whose connections are piped to a Unix socket, byte for byte: for tools
/// that speak HTTP over TCP only (schemathesis) and must reach the real daemon's socket.
///
/// Each accepted connection gets its own connection to the socket, joined by a pair of
/// `GlueHandler`s, so keep-alive, pipelining and every header pass unchanged. The daemon sees
/// the test process as the peer (uid and pid). At most `maximumConnections` are served at once
/// (later ones are closed at once); `stop()` closes every connection.
final class UnixSocketBridge: Sendable {
    let port: Int
    /// The base URL a TCP client uses.
    var url: String { "http://127.0.0.1:\(port)" }

    private let group: MultiThreadedEventLoopGroup
    private let channel: any Channel
    private let connections: Connections
    private let stopped = Atomic<Bool>(false)

    /// Connections accepted since the start; at most this many open at once.
    var accepted: Int { connections.accepted }

    init(socketPath: String, maximumConnections: Int = 64) async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let connections = Connections(maximum: maximumConnections)
        do {
            channel = try await ServerBootstrap(group: group)
                .serverChannelOption(.backlog, value: 64)
                .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
                .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
                .childChannelInitializer { inbound in
                    guard connections.admit() else { return inbound.close() }
                    inbound.closeFuture.whenComplete { _ in connections.release() }
                    // The inbound connection is registered (and read) only once this future
                    // completes: no byte arrives before the glue is in place.
                    return ClientBootstrap(group: inbound.eventLoop)
                        .connectTimeout(.seconds(5))
                        .connect(unixDomainSocketPath: socketPath)
                        .flatMapThrowing { outbound in
                            let (local, remote) = GlueHandler.matchedPair()
                            try inbound.pipeline.syncOperations.addHandler(local)
                            try outbound.pipeline.syncOperations.addHandler(remote)
                        }
                }
                .bind(host: "127.0.0.1", port: 0)
                .get()
        } catch {
            try? await group.shutdownGracefully()
            throw HarnessError("the TCP bridge to \(socketPath) cannot listen on 127.0.0.1: \(error)")
        }
        guard let port = channel.localAddress?.port else {
            try? await group.shutdownGracefully()
            throw HarnessError("the TCP bridge has no local port")
        }
        self.port = port
        self.group = group
        self.connections = connections
    }

    /// Closes the listening socket and every connection. Idempotent.
    func stop() async {
        guard !stopped.exchange(true, ordering: .acquiringAndReleasing) else { return }
        try? await channel.close()
        try? await group.shutdownGracefully()
    }
}

/// Runs `body` with a bridge to `socketPath` and stops it afterwards, also when `body` throws.
func withUnixSocketBridge<T>(to socketPath: String, _ body: (UnixSocketBridge) async throws -> T) async throws -> T {
    let bridge = try await UnixSocketBridge(socketPath: socketPath)
    do {
        let value = try await body(bridge)
        await bridge.stop()
        return value
    } catch {
        await bridge.stop()
        throw error
    }
}

/// The bridge's connection bound and count.
private final class Connections: Sendable {
    private let maximum: Int
    private let state = Mutex((open: 0, accepted: 0))

    init(maximum: Int) {
        self.maximum = maximum
    }

    var accepted: Int { state.withLock { $0.accepted } }

    func admit() -> Bool {
        state.withLock { state in
            guard state.open < maximum else { return false }
            state.open += 1
            state.accepted += 1
            return true
        }
    }

    func release() {
        state.withLock { $0.open -= 1 }
    }
}
