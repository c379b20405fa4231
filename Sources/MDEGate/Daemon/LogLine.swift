import Foundation
import Logging
import MDEGateConfig

/// How the daemon's log lines look on standard error.
///
/// - `text`: `2026-12-03T01:02:03+0000 info mdegate: key=value [MDEGate] message`, as
///   swift-log's stream handler writes it.
/// - `json`: one object per line, `{"time","level","label","message","metadata","source"}`, for
///   log shippers.
/// - Under systemd (`journal`): every line starts with its syslog priority as sd-daemon(3)
///   defines it (`<3>` error … `<7>` debug), which journald strips and files the line under, so
///   `journalctl -p warning` works; and it carries no timestamp of its own (journald has one).
public struct LogLineFormat: Sendable, Equatable {
    public var json: Bool
    public var journal: Bool

    public init(json: Bool, journal: Bool) {
        self.json = json
        self.journal = journal
    }

    /// The syslog priority of a level (sd-daemon(3)); swift-log's `trace` is debug too.
    static func priority(_ level: Logger.Level) -> Int {
        switch level {
        case .trace, .debug: 7
        case .info: 6
        case .notice: 5
        case .warning: 4
        case .error: 3
        case .critical: 2
        }
    }

    /// One line, newline included. Public so that the request fuzzer (Fuzz/) renders every
    /// event the way the daemon writes it, and checks that it stays one line.
    public func line(
        time: Date, level: Logger.Level, label: String, message: Logger.Message, metadata: Logger.Metadata,
        source: String
    ) -> String {
        var line = journal ? "<\(Self.priority(level))>" : ""
        if json {
            var object: [String: Any] = [
                "level": level.rawValue, "label": label, "message": message.description, "source": source,
            ]
            if !journal { object["time"] = Self.isoTime(time) }
            if !metadata.isEmpty { object["metadata"] = metadata.mapValues(Self.jsonValue) }
            let data = (try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .withoutEscapingSlashes])) ?? Data()
            line += String(decoding: data, as: UTF8.self)
        } else {
            if !journal { line += Self.textTime(time) + " " }
            var text = "\(level) \(label):"
            if !metadata.isEmpty {
                text += " " + metadata.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " ")
            }
            text += " [\(source)] \(message)"
            line += Self.escapingControlCharacters(text)
        }
        return line + "\n"
    }

    /// What a client sends reaches log lines (a refused query value, percent-decoded, is quoted
    /// in the reason): control characters are written as escapes (`\n`, `\r`, `\u{1B}`), so
    /// one event stays one line and nobody can forge a line, or under journald its priority.
    /// A tab stays a tab. (The JSON format escapes them already.)
    static func escapingControlCharacters(_ text: String) -> String {
        func isControl(_ value: UInt32) -> Bool { (value < 0x20 && value != 0x09) || value == 0x7F }
        guard text.utf8.contains(where: { isControl(UInt32($0)) }) else { return text }
        var escaped = ""
        escaped.reserveCapacity(text.utf8.count + 8)
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\n": escaped += "\\n"
            case "\r": escaped += "\\r"
            case _ where isControl(scalar.value): escaped += "\\u{" + String(scalar.value, radix: 16) + "}"
            default: escaped.unicodeScalars.append(scalar)
            }
        }
        return escaped
    }

    private static func jsonValue(_ value: Logger.Metadata.Value) -> Any {
        switch value {
        case .string(let text): text
        case .stringConvertible(let convertible): convertible.description
        case .array(let values): values.map(jsonValue)
        case .dictionary(let values): values.mapValues(jsonValue)
        }
    }

    /// `2026-12-03T01:02:03+0000` in local time, as swift-log's stream handler writes it.
    private static func textTime(_ time: Date) -> String {
        var seconds = time_t(time.timeIntervalSince1970)
        var parts = tm()
        localtime_r(&seconds, &parts)
        var buffer = [Int8](repeating: 0, count: 64)
        let count = strftime(&buffer, buffer.count, "%Y-%m-%dT%H:%M:%S%z", &parts)
        return String(decoding: buffer.prefix(count).map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    private static func isoTime(_ time: Date) -> String {
        time.formatted(.iso8601.year().month().day().time(includingFractionalSeconds: true))
    }

    /// Whether standard error is the stream systemd connected to the journal: `JOURNAL_STREAM`
    /// is `<device>:<inode>` of that stream, and it must match stderr's own (a daemon started by
    /// systemd that redirected stderr elsewhere must not prefix).
    public static func stderrIsJournal(environment: [String: String] = ProcessInfo.processInfo.environment) -> Bool {
        guard let value = environment["JOURNAL_STREAM"] else { return false }
        let parts = value.split(separator: ":")
        guard parts.count == 2, let device = UInt64(parts[0]), let inode = UInt64(parts[1]) else { return false }
        var status = stat()
        guard fstat(STDERR_FILENO, &status) == 0 else { return false }
        return UInt64(status.st_dev) == device && UInt64(status.st_ino) == inode
    }
}

/// Writes each event as one line on standard error, in `format`, in one `write(2)`: lines from
/// several threads never interleave, and nothing is buffered that a crash could lose.
struct LineLogHandler: LogHandler {
    let label: String
    let format: LogLineFormat
    var logLevel: Logger.Level = .trace
    var metadata: Logger.Metadata = [:]
    var metadataProvider: Logger.MetadataProvider?

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        var merged = metadata
        if let provided = metadataProvider?.get() { merged.merge(provided) { $1 } }
        if let extra = event.metadata { merged.merge(extra) { $1 } }
        let line = format.line(
            time: Date(), level: event.level, label: label, message: event.message, metadata: merged, source: event.source)
        var bytes = Array(line.utf8)
        bytes.withUnsafeMutableBytes { buffer in
            var offset = 0
            while offset < buffer.count {
                let written = write(STDERR_FILENO, buffer.baseAddress! + offset, buffer.count - offset)
                if written > 0 {
                    offset += written
                } else if written < 0, errno == EINTR {
                    continue
                } else {
                    return
                }
            }
        }
    }
}
