import NIOCore
import NIOHTTP1

/// What went in and out between NIO's HTTP handlers and `LocalAPIHandler`.
final class ExchangeRecord {
    struct Request {
        var method: String
        var uri: String
        /// A route under `/api/`: a call of the machine-action family.
        var isActionRoute: Bool {
            uri.utf8.count >= 5 && uri.prefix(5).lowercased() == "/api/"
        }
    }

    /// Requests that reached the API, complete (head to end), in order.
    var requests: [Request] = []
    /// The status of each answer the API wrote, in order.
    var answers: [Int] = []
    private var head: HTTPRequestHead?

    func received(_ part: HTTPServerRequestPart) {
        switch part {
        case .head(let head): self.head = head
        case .body: break
        case .end:
            if let head { requests.append(Request(method: head.method.rawValue, uri: head.uri)) }
            head = nil
        }
    }

    func sent(_ part: HTTPServerResponsePart) {
        if case .head(let head) = part { answers.append(Int(head.status.code)) }
    }
}

/// Sits right in front of `LocalAPIHandler` and tells `ExchangeRecord` what passes; changes
/// nothing.
final class RecordingHandler: ChannelDuplexHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias InboundOut = HTTPServerRequestPart
    typealias OutboundIn = HTTPServerResponsePart
    typealias OutboundOut = HTTPServerResponsePart

    private let record: ExchangeRecord

    init(_ record: ExchangeRecord) {
        self.record = record
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        record.received(unwrapInboundIn(data))
        context.fireChannelRead(data)
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        record.sent(unwrapOutboundIn(data))
        context.write(data, promise: promise)
    }
}
