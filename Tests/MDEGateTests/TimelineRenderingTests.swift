import Foundation
@testable import MDEGateClient
import MDEGateWire
import Testing

/// `mdegate status`'s picture of the last hour.
@Suite("The last hour in the terminal")
struct TimelineRenderingTests {
    static func api(_ name: String, attempts: [Int], throttled: [Int] = Array(repeating: 0, count: 60)) -> StatusDocument.APIState {
        StatusDocument.APIState(
            name: name,
            limits: [
                .init(spec: "100/1m", calls: 100, windowSeconds: 60, used: attempts.last ?? 0, nextFreeAt: nil),
                .init(spec: "1500/1h", calls: 1500, windowSeconds: 3600, used: attempts.reduce(0, +), nextFreeAt: nil),
            ],
            pausedUntil: nil, queued: 0,
            lastHour: .init(start: "2026-12-03T04:00:00.000Z", attempts: attempts, throttled: throttled))
    }

    @Test("a bar per minute scaled to the per-minute limit, a ! under a minute with a 429, the hour against 1500, within 80 columns")
    func chart() {
        var attempts = Array(repeating: 0, count: 60)
        attempts[0] = 1       // the oldest minute: a little
        attempts[30] = 50     // half the minute's limit
        attempts[59] = 100    // the whole minute's limit
        var throttled = Array(repeating: 0, count: 60)
        throttled[30] = 1
        let lines = Rendering.lastHour([Self.api("cancel", attempts: attempts, throttled: throttled), Self.api("isolate", attempts: Array(repeating: 0, count: 60))])
        #expect(lines.first == "LAST 60 MINUTES, attempts per minute (! a minute with a 429)")
        #expect(lines[1] == "cancel: 151 in the hour of 1500 allowed; busiest minute 100 of 100")
        #expect(!lines.contains { $0.hasPrefix("isolate") }, "an API without attempts in the hour is left out")
        #expect(lines.count == 2 + 5)
        #expect(lines.allSatisfy { $0.count <= 80 }, "\(lines.joined(separator: "\n"))")
        let bars = lines[2...4].map { Array($0.dropFirst(7)) }
        #expect(bars[0].count == 60 && bars[0][59] == "█" && bars[1][59] == "█" && bars[2][59] == "█", "the full minute fills all three rows")
        #expect(bars[2][30] == "█" && bars[1][30] == "▄" && (bars[0].count <= 30 || bars[0][30] == " "), "half: a row and a half")
        #expect(bars[2][0] == "▁", "any attempt shows")
        #expect(bars[2][1] == " ")
        let axis = Array(lines[5].dropFirst(7))
        #expect(axis[30] == "!" && axis.filter { $0 == "!" }.count == 1, "\(lines[5])" as Comment)
        #expect(lines[2].hasPrefix("  100 ┤"))
        #expect(lines[6].contains("-60m") && lines[6].hasSuffix("now"))
    }

    @Test("limits shorter than a minute scale to what they allow in one; status draws the picture only when there were attempts")
    func scaleAndPlacement() {
        let short = [StatusDocument.LimitState(spec: "5/1s", calls: 5, windowSeconds: 1, used: 0, nextFreeAt: nil),
                     StatusDocument.LimitState(spec: "12/4s", calls: 12, windowSeconds: 4, used: 0, nextFreeAt: nil)]
        #expect(Rendering.capacity(short, seconds: 60) == 180, "12 per 4 s is 180 a minute, tighter than 300")
        #expect(Rendering.capacity(short, seconds: 3600) == 10_800)
        let quiet = StatusDocument(
            limits: [], guardMs: 250, queue: .init(depth: 0, clients: []), pausedUntil: nil, inFlight: 0,
            apis: [Self.api("cancel", attempts: Array(repeating: 0, count: 60))],
            upstream: .init(baseUrl: "https://x", lastStatus: nil, lastError: nil),
            auth: .init(mode: "token_file", tokenExpiresAt: nil, lastError: nil), sharedQuota: nil)
        #expect(!Rendering.status(quiet).contains("LAST 60 MINUTES"))
    }
}
