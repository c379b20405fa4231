import NIOCore
import NIOHTTP1

/// Collects one HTTP request, asks the simulator what to do, and writes the answer.
///
/// NIO's server pipeline (`configureHTTPServerPipeline`) parses HTTP and holds back pipelined
/// requests until the current answer is complete, so this handler sees one request at a time.
final class RequestHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    /// Bodies past this size are not kept; the request is answered 413.
    private static let maximumBodySize = 1 << 20

    private let simulator: Simulator
    private var head: HTTPRequestHead?
    private var body: ByteBuffer?
    private var bodyTooLarge = false

    init(simulator: Simulator) {
        self.simulator = simulator
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch self.unwrapInboundIn(data) {
        case .head(let head):
            self.head = head
            self.body = nil
            self.bodyTooLarge = false
            // Tell curl-like clients to send the body now instead of waiting a second for us.
            if head.headers[canonicalForm: "expect"].contains(where: { $0.lowercased() == "100-continue" }) {
                let proceed = HTTPResponseHead(version: head.version, status: .continue)
                context.writeAndFlush(self.wrapOutboundOut(.head(proceed)), promise: nil)
            }
        case .body(var chunk):
            if (self.body?.readableBytes ?? 0) + chunk.readableBytes > Self.maximumBodySize {
                self.bodyTooLarge = true
                self.body = nil
            } else if !self.bodyTooLarge {
                if self.body == nil { self.body = chunk } else { self.body!.writeBuffer(&chunk) }
            }
        case .end:
            guard let head = self.head else { return }
            self.head = nil
            let path = String(head.uri.prefix { $0 != "?" })
            let query = String(head.uri.dropFirst(path.count + 1))
            let request = SimulatorRequest(
                method: head.method, path: path, headers: head.headers, body: self.body, query: query)
            self.body = nil
            let decision =
                self.bodyTooLarge
                ? Decision(action: .reply(.upstreamError(
                    .payloadTooLarge, code: "InvalidRequestBody", message: "The request body is larger than 1 MiB.")))
                : self.simulator.decide(request)
            if decision.delay > .zero {
                context.eventLoop.assumeIsolated().scheduleTask(in: decision.delay) {
                    self.complete(request, decision, keepAlive: head.isKeepAlive, context: context)
                }
            } else {
                self.complete(request, decision, keepAlive: head.isKeepAlive, context: context)
            }
        }
    }

    private func complete(
        _ request: SimulatorRequest, _ decision: Decision, keepAlive: Bool, context: ChannelHandlerContext
    ) {
        self.simulator.finish(request, decision)
        switch decision.action {
        case .drop:
            context.close(promise: nil)
        case .reply(let reply):
            var headers = reply.headers
            headers.replaceOrAdd(name: "Content-Length", value: String(reply.body.readableBytes))
            if !keepAlive { headers.replaceOrAdd(name: "Connection", value: "close") }
            let head = HTTPResponseHead(version: .http1_1, status: reply.status, headers: headers)
            context.write(self.wrapOutboundOut(.head(head)), promise: nil)
            context.write(self.wrapOutboundOut(.body(.byteBuffer(reply.body))), promise: nil)
            context.writeAndFlush(self.wrapOutboundOut(.end(nil))).assumeIsolated().whenComplete { _ in
                if !keepAlive { context.close(promise: nil) }
            }
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }
}
