import Foundation
import Logging
import MDEGateCore
import Synchronization
import Testing

@testable import MDEGate

/// Every event rendered as the daemon writes it under journald.
final class RenderedLines: Sendable {
    let lines = Mutex<[String]>([])
}

struct RenderingLogHandler: LogHandler {
    let sink: RenderedLines
    var logLevel: Logger.Level = .trace
    var metadata: Logger.Metadata = [:]

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        var merged = metadata
        if let extra = event.metadata { merged.merge(extra) { $1 } }
        let line = LogLineFormat(json: false, journal: true).line(
            time: Date(), level: event.level, label: "mdegate", message: event.message, metadata: merged, source: event.source)
        sink.lines.withLock { $0.append(line) }
    }
}

@Suite("Local API: what a client sends cannot bend the log")
struct LocalAPILogTests {
    @Test("a refused query value with line breaks is logged on one line, its priority unforged (FuzzRequest's log invariant)")
    func refusedQueryStaysOneLine() async throws {
        let sink = RenderedLines()
        let logger = Logger(label: "mdegate") { _ in RenderingLogHandler(sink: sink) }
        let gateway = scriptedGateway(
            .testing([Limit(calls: 10, window: .seconds(60))]), store: InMemoryStore(), upstream: ScriptedUpstream())
        try await gateway.start()
        let api = LocalAPI(gateway: gateway, logger: logger)
        let response = await api.handle(
            LocalRequest(
                method: "GET", uri: "/v1/requests?uid=%0A%3C0%3Eforged%0D", headers: [:], body: [], bodyTooLarge: false,
                peer: PeerCredentials(pid: 42, uid: 1000, gid: 1000)))
        #expect(response.status == 400)
        let lines = sink.lines.withLock { $0 }
        #expect(!lines.isEmpty)
        for line in lines {
            #expect(line.utf8.filter { $0 == 10 || $0 == 13 }.count == 1 && line.utf8.last == 10, "\(line.debugDescription)")
        }
        #expect(lines.contains { $0.hasPrefix("<5>notice") && $0.contains(#"uid "\n<0>forged\r""#) }, "\(lines)")
    }
}
