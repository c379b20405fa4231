import Foundation
import Logging
import MDEGate

/// Renders every log event the way the daemon writes it under systemd (text, each line led by
/// its syslog priority for the journal) and checks that it is one line: a client must not be
/// able to forge a log line, or its priority, with what it sends. Writes nothing.
struct OneLineLogHandler: LogHandler {
    let label: String
    var logLevel: Logger.Level = .trace
    var metadata: Logger.Metadata = [:]

    static let formats = [LogLineFormat(json: false, journal: true), LogLineFormat(json: true, journal: true)]
    static let time = Date(timeIntervalSince1970: 1_800_000_000)

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        var merged = metadata
        if let extra = event.metadata { merged.merge(extra) { $1 } }
        for format in Self.formats {
            let line = format.line(
                time: Self.time, level: event.level, label: label, message: event.message, metadata: merged,
                source: event.source)
            let breaks = line.utf8.filter { $0 == 10 || $0 == 13 }.count
            if breaks != 1 || line.utf8.last != 10 {
                fail("a log event is not one line (json: \(format.json)): \(line.debugDescription)")
            }
        }
    }
}
