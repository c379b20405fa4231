import Foundation
import MDEGateCore
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// Reads the gateway's own attempt times while a quota scenario runs, to split the lag seen at
/// the simulator into "the gateway recorded the attempt late" and "the attempt took long to
/// leave after it was recorded".
///
/// `GET /v1/status` shows, for each full limit N/W, `nextFreeAt` = (attempt number
/// `total - N`) + W + guard, with `total` = requests − queue depth (every request is dispatched
/// once when nothing is retried). Polling every 100 ms samples attempt times at the status
/// document's millisecond precision. Opt-in: each poll costs the gateway a little work.
final class LedgerProbe: Sendable {
    private let daemon: RunningDaemon
    private let requests: Int
    private let spans: [String: Int64]
    private let stopped = Atomic<Bool>(false)
    private let samples = Mutex<[Int: Int64]>([:])

    init(daemon: RunningDaemon, requests: Int, limits: [Limit], guardBand: Duration) {
        self.daemon = daemon
        self.requests = requests
        var spans: [String: Int64] = [:]
        for limit in limits { spans[limit.spec] = (limit.window + guardBand).nanoseconds }
        self.spans = spans
    }

    /// Attempt number → the time the gateway recorded for it (millisecond precision).
    var recordedTimes: [Int: Int64] { samples.withLock { $0 } }

    func stop() { stopped.store(true, ordering: .sequentiallyConsistent) }

    /// Polls until stopped or `deadline` (monotonic ns).
    func run(until deadline: Int64) {
        let parser = ISO8601DateFormatter()
        parser.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        var connection: HTTPConnection?
        while !stopped.load(ordering: .sequentiallyConsistent), Now.monotonic() < deadline {
            usleep(100_000)
            do {
                if connection == nil { connection = try HTTPConnection(daemon.endpoint, timeoutSeconds: 10) }
                let reply = try connection!.send("GET", "/v1/status")
                guard let status = try JSONSerialization.jsonObject(with: Data(reply.body)) as? [String: Any],
                    let depth = (status["queue"] as? [String: Any])?["depth"] as? Int,
                    let limits = status["limits"] as? [[String: Any]]
                else { continue }
                let total = requests - depth
                for limit in limits {
                    guard let spec = limit["spec"] as? String, let span = spans[spec],
                        let calls = limit["calls"] as? Int, total >= calls,
                        let text = limit["nextFreeAt"] as? String, let date = parser.date(from: text)
                    else { continue }
                    let recorded = Int64((date.timeIntervalSince1970 * 1000).rounded()) * 1_000_000 - span
                    samples.withLock { $0[total - calls] = recorded }
                }
            } catch {
                connection = nil
            }
        }
    }

    func analyse(arrivals: [Int64], into report: inout Report) {
        let sampled = samples.withLock { $0 }.filter { $0.key < arrivals.count }.sorted { $0.key < $1.key }
        guard !sampled.isEmpty else {
            report.note("ledger probe: no samples")
            return
        }
        // Attempt recorded → arrival upstream: the libcurl, loopback and scheduling time after the ledger entry.
        let departures = Sample(sampled.map { Double(arrivals[$0.key] - $0.value) / 1e6 })
        report.info(
            "ledger entry → arrival (\(sampled.count) sampled): p50 / max", "\(ms(departures.p50, digits: 1)) / \(ms(departures.max, digits: 1))",
            key: "probe_record_to_arrival_p50_ms", round4(departures.p50))
        let worst = sampled.max { arrivals[$0.key] - $0.value < arrivals[$1.key] - $1.value }!
        report.note(
            "ledger probe (GET /v1/status every 100 ms, ms precision): attempt times recorded by the gateway for "
                + "\(sampled.count) attempts; the slowest to arrive was #\(worst.key), "
                + String(format: "%.1f ms", Double(arrivals[worst.key] - worst.value) / 1e6) + " after its ledger entry")
    }
}
