import HTTPTypes
import Logging
import NIOCore
import NIOHTTP1
import NIOHTTPTypesHTTP1
import Synchronization

/// One connection's requests, each handed to `LocalAPI` in the turn its last byte was read, and
/// its answer written in the turn it is ready: head, body and end in one flush.
///
/// The connection's event loop is the gateway's (see `LocalAPIServer`), so the API's futures
/// complete on it and their callbacks run here with no hop.
final class LocalAPIHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    /// Answers one request; its future completes on the connection's loop.
    typealias Responder = (LocalRequest) -> EventLoopFuture<LocalResponse>

    private let respond: Responder
    private let peer: PeerCredentials
    private let logger: Logger
    private var head: HTTPRequestHead?
    private var body: [UInt8] = []
    private var tooLarge = false

    convenience init(api: LocalAPI, peer: PeerCredentials, logger: Logger) {
        self.init(respond: { api.respond(to: $0) }, peer: peer, logger: logger)
    }

    init(respond: @escaping Responder, peer: PeerCredentials, logger: Logger) {
        self.respond = respond
        self.peer = peer
        self.logger = logger
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
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
            guard let requestHead = head else { return }
            head = nil
            let request = LocalRequest(
                method: requestHead.method.rawValue, uri: requestHead.uri,
                headers: HTTPFields(requestHead.headers, splitCookie: false),
                body: body, bodyTooLarge: tooLarge, peer: peer)
            respond(request).assumeIsolated().whenSuccess { response in
                self.write(response, to: requestHead, context: context)
            }
        }
    }

    private func write(_ response: LocalResponse, to request: HTTPRequestHead, context: ChannelHandlerContext) {
        // The client may have gone while its request waited (a synchronous cancel).
        guard context.channel.isActive else { return }
        var headers = HTTPHeaders(response.headers)
        headers.replaceOrAdd(name: "Content-Length", value: String(response.body.count))
        let keepAlive = request.isKeepAlive
        if !keepAlive { headers.replaceOrAdd(name: "Connection", value: "close") }
        let head = HTTPResponseHead(version: request.version, status: .init(statusCode: response.status), headers: headers)
        context.write(wrapOutboundOut(.head(head)), promise: nil)
        context.write(wrapOutboundOut(.body(.byteBuffer(context.channel.allocator.buffer(bytes: response.body)))), promise: nil)
        if keepAlive {
            context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
        } else {
            context.writeAndFlush(wrapOutboundOut(.end(nil))).assumeIsolated().whenComplete { _ in
                context.close(promise: nil)
            }
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        logger.debug("connection ended", metadata: ["error": "\(error)"])
        context.close(promise: nil)
    }
}

/// The server's open connections, so that a stop past its grace period can close them.
final class OpenConnections: Sendable {
    private let channels = Mutex<[ObjectIdentifier: any Channel]>([:])

    func insert(_ channel: any Channel) {
        let key = ObjectIdentifier(channel)
        channels.withLock { $0[key] = channel }
        channel.closeFuture.whenComplete { _ in
            self.channels.withLock { $0[key] = nil }
        }
    }

    func closeAll() {
        for channel in channels.withLock({ Array($0.values) }) { channel.close(promise: nil) }
    }
}
