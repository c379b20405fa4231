import Foundation
import Logging
import MDEGate
import MDEGateCore
import MDEGateWire
import NIOCore
import NIOEmbedded
import NIOHTTP1
import NIOPosix

/// One fuzz input's connection: the bytes in, the answers out, and what reached the upstream.
///
/// Threads: the gateway's executor is its event loop, and `LocalAPIHandler` completes the
/// gateway's futures on the connection's loop, so in the daemon both are one loop. Here the
/// connection is an `EmbeddedChannel` created *on* the gateway's loop thread (one thread of a
/// `MultiThreadedEventLoopGroup`), so the two run on one thread as in the daemon, and the
/// fuzzer's thread drives them with `submit(...).wait()`: write the input, then turn the loop
/// until every request that reached the API has its answer and the gateway has nothing queued
/// or in flight. No socket, no sleeping; the only timers are the gateway's own (retry backoff
/// of a millisecond).
final class Exchange: @unchecked Sendable {
    /// The loop every input's gateway and connection live on.
    static let loop = MultiThreadedEventLoopGroup(numberOfThreads: 1).next()
    /// Shared by the gateways: metrics are counters and gauges, and nothing routes on them.
    static let metrics = GatewayMetrics()
    static let logger = Logger(label: "mdegate") { label in OneLineLogHandler(label: label) }
    static let settings: Gateway.Settings = {
        // Limits so wide that nothing waits for a slot (waiting would be real time), a
        // millisecond of backoff so retries end quickly, and a short queue.
        var settings = Gateway.Settings(
            limits: [Limit(calls: 1_000_000, window: .seconds(60))], guardBand: .zero,
            retryPolicy: RetryPolicy(maxAttempts: 3, initialBackoff: .milliseconds(1), maxBackoff: .milliseconds(2)),
            maxConcurrency: 8, maxPending: 16)
        settings.retention = .seconds(3600)
        return settings
    }()
    static let peer = PeerCredentials(pid: 4242, uid: 1000, gid: 1000)
    /// An input that is still not settled after this long is a hang.
    static let deadline: Duration = .seconds(10)

    let input: [UInt8]
    let upstream = ScriptedUpstream()
    // Touched on the loop only.
    private var gateway: Gateway!
    private var channel: EmbeddedChannel?
    private let record = ExchangeRecord()
    private var output: [UInt8] = []
    private var closedEarly = false

    init(input: [UInt8]) {
        self.input = input
    }

    func run() {
        let loop = Self.loop
        try! loop.submit {
            self.connect()
            // Whole input in chunks, so a request's parts also arrive split across reads; the
            // chunk size comes from the input, so one input always splits the same way; at most
            // 64 chunks, because each runs the whole pipeline and a long input in bytes was most
            // of a run's time. All in one turn of the loop, as a burst of reads is in the daemon
            // (a hop per chunk was most of an input's time before that).
            let chunk = max(1 + Int(self.input.count % 61) * 8, self.input.count / 64)
            var offset = 0
            while offset < self.input.count {
                let end = min(self.input.count, offset + chunk)
                self.write(self.input[offset..<end])
                offset = end
            }
        }.wait()
        settle()
        // The client stops writing (half-close): a request cut short is NIO's to refuse.
        try! loop.submit { self.closeInput() }.wait()
        settle()
        try! loop.submit { self.disconnect() }.wait()
        check()
    }

    private func connect() {
        gateway = Gateway(
            settings: Self.settings, store: InMemoryStore(), upstream: upstream, tokens: FixedToken(),
            eventLoop: Self.loop, logger: Self.logger, metrics: Self.metrics)
        let channel = EmbeddedChannel()
        do {
            try LocalAPIServer.configureConnection(
                channel.pipeline.syncOperations, api: LocalAPI(gateway: gateway, logger: Self.logger), peer: Self.peer,
                logger: Self.logger)
            // Watches requests as they reach the API and answers as the API writes them.
            let errorHandler = try channel.pipeline.syncOperations.handler(type: HTTPServerProtocolErrorHandler.self)
            try channel.pipeline.syncOperations.addHandler(RecordingHandler(record), position: .after(errorHandler))
            // An EmbeddedChannel connects at once; no waiting on the loop's own thread.
            channel.connect(to: try SocketAddress(unixDomainSocketPath: "/fuzz.sock"), promise: nil)
        } catch {
            fatalError("cannot set up the connection: \(error)")
        }
        guard channel.isActive else { fatalError("the in-memory connection did not become active") }
        self.channel = channel
    }

    private func write(_ part: ArraySlice<UInt8>) {
        guard let channel, channel.isActive else { return }
        do {
            try channel.writeInbound(channel.allocator.buffer(bytes: part))
        } catch {
            // NIO's error handler has answered 400 and closed the connection.
        }
        collect()
    }

    private func closeInput() {
        guard let channel, channel.isActive else { return }
        channel.pipeline.fireUserInboundEventTriggered(ChannelEvent.inputClosed)
        collect()
    }

    private func disconnect() {
        guard let channel else { return }
        if channel.isActive { closedEarly = closedEarly || record.requests.count > record.answers.count }
        collect()
        _ = try? channel.finish(acceptAlreadyClosed: true)
        self.channel = nil
        gateway = nil
    }

    /// Takes what the connection wrote so far.
    private func collect() {
        guard let channel else { return }
        channel.embeddedEventLoop.run()
        while let buffer = try? channel.readOutbound(as: IOData.self) {
            switch buffer {
            case .byteBuffer(let bytes): output += bytes.readableBytesView
            case .fileRegion: fatalError("the API wrote a file region")
            }
        }
        if !channel.isActive, record.requests.count > record.answers.count { closedEarly = true }
    }

    /// Whether every request that reached the API is answered (or can no longer be) and the
    /// gateway has nothing queued or in flight.
    private func settled() -> Bool {
        collect()
        let answered = record.answers.count >= record.requests.count || !(channel?.isActive ?? false)
        guard answered else { return false }
        let status = gateway.assumeIsolated { $0.status() }
        return status.queue.depth == 0 && status.inFlight == 0
    }

    private func settle() {
        let start = ContinuousClock.now
        while !(try! Self.loop.submit { self.settled() }.wait()) {
            if ContinuousClock.now - start > Self.deadline {
                fatalError(
                    "hang: not settled after \(Self.deadline): \(record.requests.count) request(s) reached the API, "
                        + "\(record.answers.count) answered, \(upstream.arrivals.count) upstream call(s)")
            }
        }
    }

    // MARK: Invariants

    /// What must hold for every input; a violation stops the process with the reason.
    private func check() {
        let responses: [ResponseReader.Response]
        do {
            responses = try ResponseReader.read(output, requestMethods: record.requests.map(\.method))
        } catch {
            fail("the connection's output is not well-formed HTTP/1.1: \(error)")
        }
        if responses.count < record.answers.count {
            fail("the API wrote \(record.answers.count) answer(s), \(responses.count) reached the wire")
        }
        for (index, response) in responses.enumerated() {
            guard index < record.answers.count else {
                // NIO's own answer to bytes that are not HTTP, after the API's answers.
                guard response.status == 400 || response.status == 413 || response.status == 431 || response.status == 505
                else { fail("NIO answered \(response.status) to a protocol error") }
                continue
            }
            checkAnswer(response, to: record.requests[index])
        }

        // What reached the upstream: only calls that the API accepted, each built from an id
        // that the input held, each within the route table.
        let calls = upstream.arrivals
        let admitted = zip(record.requests.prefix(record.answers.count), responses).filter { request, response in
            request.isActionRoute && response.header("Mdegate-Request-Id") != nil
        }.count
        let unanswered = max(0, record.requests.count - min(responses.count, record.answers.count))
        let maxAttempts = Self.settings.retryPolicy.maxAttempts
        if calls.count > (admitted + unanswered) * maxAttempts {
            fail(
                "\(calls.count) upstream call(s) for \(admitted) accepted request(s) and \(unanswered) unanswered: "
                    + calls.map { "\($0.method) \($0.path)" }.joined(separator: ", "))
        }
        let uris = record.requests.map { $0.uri.lowercased() }
        for call in calls {
            if let problem = UpstreamCallCheck.problem(with: call) {
                fail("upstream call \(call.method) \(call.path): \(problem)")
            }
            let target = UpstreamCallCheck.target(of: call).lowercased()
            guard target.isEmpty || uris.contains(where: { $0.contains(target) }) else {
                fail("upstream call \(call.method) \(call.path): its id is in no request of the input")
            }
        }
    }

    /// One answer of the API to one request.
    private func checkAnswer(_ response: ResponseReader.Response, to request: ExchangeRecord.Request) {
        if response.status < 200 || response.status > 599 {
            fail("status \(response.status) for \(request.method) \(request.uri)")
        }
        let contentType = response.header("Content-Type") ?? ""
        let mine = response.header("Mdegate-Request-Id") == nil && contentType.hasPrefix("application/json")
        // The gateway's own refusals have the upstream's error shape, with a target.
        if mine, response.status >= 400, request.method != "HEAD" {
            guard let object = try? JSONSerialization.jsonObject(with: Data(response.body)) as? [String: Any],
                let error = object["error"] as? [String: Any], error["code"] is String, error["message"] is String,
                let target = error["target"] as? String, !target.isEmpty
            else {
                fail("\(response.status) for \(request.method) \(request.uri) is not an error document: \(String(decoding: response.body, as: UTF8.self))")
            }
        }
        if response.status == 202 {
            guard let location = response.header("Location"), location.hasPrefix("/v1/requests/"),
                response.header("Mdegate-Request-Id") != nil
            else { fail("202 without Location and Mdegate-Request-Id for \(request.method) \(request.uri)") }
        }
    }
}

/// Stops the process: libFuzzer reports the input that got here as a crash.
func fail(_ message: String) -> Never {
    fatalError("FuzzRequest invariant broken: \(message)")
}
