import Foundation
import NIOCore
import NIOPosix
import Synchronization

/// A loopback HTTP proxy, to prove that traffic went through the configured `upstream.proxy`.
///
/// libcurl reaches an `https://` target through an `http://` proxy with `CONNECT host:port`: the
/// proxy answers `200 Connection established` and then pipes bytes both ways (the TLS session is
/// end to end). For a plain `http://` target libcurl sends the request itself with an absolute
/// URI (`POST http://127.0.0.1:PORT/path HTTP/1.1`): the proxy forwards it in origin form with
/// `Connection: close`, one request per proxy connection. Anything else gets 405.
///
/// Only loopback targets are served (403 otherwise): tests never send traffic off the machine.
/// Every tunnel and forwarded request is counted by its target `host:port`. At most
/// `maximumConnections` client connections are served at once (later ones are closed at once);
/// a request head may be at most 16 KiB. `stop()` closes every connection.
final class ConnectProxy: Sendable {
    /// What went through the proxy since it started.
    struct Traffic: Sendable, Equatable, CustomStringConvertible {
        /// Established `CONNECT` tunnels by target `host:port`, as the client wrote it.
        var tunnels: [String: Int] = [:]
        /// Forwarded absolute-URI requests by target `host:port`.
        var forwarded: [String: Int] = [:]
        /// Requests answered with an error instead (405, 403, 400, 502, ...).
        var refused = 0

        var description: String { "tunnels \(tunnels), forwarded \(forwarded), refused \(refused)" }
    }

    let port: Int
    /// The value for `upstream.proxy` (and libcurl's `CURLOPT_PROXY`).
    var url: String { "http://127.0.0.1:\(port)" }

    private let group: MultiThreadedEventLoopGroup
    private let channel: any Channel
    private let ledger: Ledger
    private let stopped = Atomic<Bool>(false)

    /// Listens on a free port of 127.0.0.1.
    init(maximumConnections: Int = 64) async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let ledger = Ledger(maximumConnections: maximumConnections)
        do {
            channel = try await ServerBootstrap(group: group)
                .serverChannelOption(.backlog, value: 64)
                .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
                .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
                .childChannelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        guard ledger.admitConnection() else {
                            channel.close(promise: nil)
                            return
                        }
                        channel.closeFuture.whenComplete { _ in ledger.releaseConnection() }
                        try channel.pipeline.syncOperations.addHandler(ProxyRequestHandler(ledger: ledger))
                    }
                }
                .bind(host: "127.0.0.1", port: 0)
                .get()
        } catch {
            try? await group.shutdownGracefully()
            throw HarnessError("the CONNECT proxy cannot listen on 127.0.0.1: \(error)")
        }
        guard let port = channel.localAddress?.port else {
            try? await group.shutdownGracefully()
            throw HarnessError("the CONNECT proxy has no local port")
        }
        self.port = port
        self.group = group
        self.ledger = ledger
    }

    var traffic: Traffic { ledger.traffic }

    /// Established tunnels to `target` (`host:port`).
    func tunnels(to target: String) -> Int {
        ledger.traffic.tunnels[target] ?? 0
    }

    /// Forwarded requests to `target` (`host:port`).
    func forwarded(to target: String) -> Int {
        ledger.traffic.forwarded[target] ?? 0
    }

    /// Closes the listening socket and every connection, tunnels included. Idempotent.
    func stop() async {
        guard !stopped.exchange(true, ordering: .acquiringAndReleasing) else { return }
        try? await channel.close()
        // Shutting the loop down closes every remaining channel.
        try? await group.shutdownGracefully()
    }
}

/// Runs `body` with a fresh proxy and stops it afterwards, also when `body` throws.
func withConnectProxy<T>(_ body: (ConnectProxy) async throws -> T) async throws -> T {
    let proxy = try await ConnectProxy()
    do {
        let value = try await body(proxy)
        await proxy.stop()
        return value
    } catch {
        await proxy.stop()
        throw error
    }
}

/// The proxy's counters and its connection bound, shared by every connection.
private final class Ledger: Sendable {
    private struct State {
        var traffic = ConnectProxy.Traffic()
        var openConnections = 0
    }

    private let maximumConnections: Int
    private let state = Mutex(State())

    init(maximumConnections: Int) {
        self.maximumConnections = maximumConnections
    }

    var traffic: ConnectProxy.Traffic { state.withLock { $0.traffic } }

    func admitConnection() -> Bool {
        state.withLock { state in
            guard state.openConnections < maximumConnections else { return false }
            state.openConnections += 1
            return true
        }
    }

    func releaseConnection() {
        state.withLock { $0.openConnections -= 1 }
    }

    func tunnelled(to target: String) {
        state.withLock { $0.traffic.tunnels[target, default: 0] += 1 }
    }

    func forwarded(to target: String) {
        state.withLock { $0.traffic.forwarded[target, default: 0] += 1 }
    }

    func refused() {
        state.withLock { $0.traffic.refused += 1 }
    }
}

/// Reads one request head from a client, connects to its target, and hands both connections to
/// a pair of `GlueHandler`s; after that, bytes flow through the glue only.
private final class ProxyRequestHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private static let maximumHeadSize = 16 * 1024
    private static let endOfHead: [UInt8] = Array("\r\n\r\n".utf8)

    private enum State {
        case readingHead
        /// The head is read; bytes that follow it wait in `received` until the target answers.
        case connecting
        /// An error answer is on its way and the connection closes.
        case failed
    }

    private let ledger: Ledger
    private var state = State.readingHead
    private var received: ByteBuffer?

    init(ledger: Ledger) {
        self.ledger = ledger
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if case .failed = state { return }
        var bytes = unwrapInboundIn(data)
        if received == nil { received = bytes } else { received!.writeBuffer(&bytes) }
        guard case .readingHead = state, let buffer = received else { return }

        guard let end = buffer.readableBytesView.firstRange(of: Self.endOfHead) else {
            if buffer.readableBytes > Self.maximumHeadSize {
                refuse(context: context, status: "431 Request Header Fields Too Large", message: "request head over 16 KiB")
            }
            return
        }
        let headLength = end.upperBound - buffer.readableBytesView.startIndex
        let head = String(decoding: buffer.readableBytesView.prefix(headLength), as: UTF8.self)
        received!.moveReaderIndex(forwardBy: headLength)
        route(head: head, context: context)
    }

    private func route(head: String, context: ChannelHandlerContext) {
        let lines = head.components(separatedBy: "\r\n").filter { !$0.isEmpty }
        let requestLine = lines.first?.split(separator: " ", omittingEmptySubsequences: false) ?? []
        guard requestLine.count == 3, requestLine[2].hasPrefix("HTTP/1.") else {
            return refuse(context: context, status: "400 Bad Request", message: "not an HTTP/1.x request line: \(lines.first ?? "")")
        }
        let method = String(requestLine[0])
        let target = String(requestLine[1])

        if method == "CONNECT" {
            guard let endpoint = Endpoint(authority: target) else {
                return refuse(context: context, status: "400 Bad Request", message: "CONNECT needs host:port, got \(target)")
            }
            connect(to: endpoint, context: context) { context, _ in
                context.writeAndFlush(self.wrapOutboundOut(ByteBuffer(string: "HTTP/1.1 200 Connection established\r\n\r\n")), promise: nil)
                self.ledger.tunnelled(to: endpoint.authority)
            }
            return
        }

        guard target.lowercased().hasPrefix("http://") else {
            return refuse(
                context: context, status: "405 Method Not Allowed",
                message: "this proxy takes CONNECT host:port or an absolute http:// URI, got \(method) \(target)",
                extraHeaders: "Allow: CONNECT\r\n")
        }
        let rest = target.dropFirst("http://".count)
        let authority = String(rest.prefix { $0 != "/" && $0 != "?" })
        var path = String(rest.dropFirst(authority.count))
        if path.isEmpty || path.hasPrefix("?") { path = "/" + path }
        guard let endpoint = Endpoint(authority: authority.contains(":") ? authority : authority + ":80") else {
            return refuse(context: context, status: "400 Bad Request", message: "cannot read the host of \(target)")
        }
        // Hop-by-hop headers stay here; one request per connection keeps the forwarding simple.
        let hopByHop: Set<String> = ["connection", "proxy-connection", "keep-alive", "proxy-authorization"]
        let headers = lines.dropFirst().filter { line in
            !hopByHop.contains(line.prefix { $0 != ":" }.trimmingCharacters(in: .whitespaces).lowercased())
        }
        let forwardedHead = (["\(method) \(path) \(requestLine[2])"] + headers + ["Connection: close", "", ""]).joined(separator: "\r\n")
        connect(to: endpoint, context: context) { _, peer in
            peer.write(ByteBuffer(string: forwardedHead), promise: nil)
            self.ledger.forwarded(to: endpoint.authority)
        }
    }

    /// Connects to `endpoint` on this connection's event loop; once connected, `established`
    /// writes what must go first, then the glue takes over and the bytes that came after the head
    /// follow to the target.
    private func connect(
        to endpoint: Endpoint,
        context: ChannelHandlerContext,
        established: @escaping (ChannelHandlerContext, any Channel) -> Void
    ) {
        guard endpoint.isLoopback else {
            return refuse(context: context, status: "403 Forbidden", message: "only loopback targets are allowed, not \(endpoint.authority)")
        }
        state = .connecting
        ClientBootstrap(group: context.eventLoop)
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .connectTimeout(.seconds(5))
            .connect(host: endpoint.host, port: endpoint.port)
            .assumeIsolated()
            .whenComplete { result in
                switch result {
                case .failure(let error):
                    self.refuse(context: context, status: "502 Bad Gateway", message: "cannot connect to \(endpoint.authority): \(error)")
                case .success(let peer):
                    established(context, peer)
                    self.glue(context: context, peer: peer)
                }
            }
    }

    private func glue(context: ChannelHandlerContext, peer: any Channel) {
        guard context.channel.isActive else {
            // The client left while the proxy was connecting.
            peer.close(promise: nil)
            return
        }
        let (local, remote) = GlueHandler.matchedPair()
        do {
            try context.pipeline.syncOperations.addHandler(local)
            try peer.pipeline.syncOperations.addHandler(remote)
        } catch {
            peer.close(promise: nil)
            context.close(promise: nil)
            return
        }
        if let pending = received, pending.readableBytes > 0 {
            peer.write(pending, promise: nil)
        }
        peer.flush()
        received = nil
        context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
    }

    /// Answers with an error and closes the connection; once per connection.
    private func refuse(context: ChannelHandlerContext, status: String, message: String, extraHeaders: String = "") {
        if case .failed = state { return }
        state = .failed
        received = nil
        ledger.refused()
        let body = message + "\n"
        let answer = "HTTP/1.1 \(status)\r\n\(extraHeaders)Content-Type: text/plain\r\nContent-Length: \(body.utf8.count)\r\nConnection: close\r\n\r\n\(body)"
        context.writeAndFlush(wrapOutboundOut(ByteBuffer(string: answer))).assumeIsolated().whenComplete { _ in
            context.close(promise: nil)
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }
}

/// A proxy target, `host:port` (an IPv6 host in brackets).
private struct Endpoint {
    var host: String
    var port: Int
    /// As the client wrote it: the key the traffic is counted by.
    var authority: String

    init?(authority: String) {
        guard let colon = authority.lastIndex(of: ":"), let port = Int(authority[authority.index(after: colon)...]),
            (1...65535).contains(port)
        else { return nil }
        var host = String(authority[..<colon])
        if host.hasPrefix("["), host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        guard !host.isEmpty else { return nil }
        self.host = host
        self.port = port
        self.authority = authority
    }

    var isLoopback: Bool {
        host == "localhost" || host == "::1" || host.hasPrefix("127.")
    }
}
