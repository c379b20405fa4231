import Foundation
import Logging
import Testing

@testable import MDEGate

@Suite("Log lines: text, JSON, and journald's priority prefix")
struct LogLineTests {
    static let time = Date(timeIntervalSince1970: 1_764_720_000.25)

    static func line(_ format: LogLineFormat, _ level: Logger.Level, metadata: Logger.Metadata = ["b": "2", "a": "1"]) -> String {
        format.line(time: time, level: level, label: "mdegate", message: "request finished", metadata: metadata, source: "MDEGate")
    }

    @Test("under journald every line starts with its sd-daemon priority and has no timestamp of its own")
    func journalPrefix() {
        let journal = LogLineFormat(json: false, journal: true)
        let expected: [(Logger.Level, String)] = [
            (.trace, "<7>"), (.debug, "<7>"), (.info, "<6>"), (.notice, "<5>"), (.warning, "<4>"), (.error, "<3>"), (.critical, "<2>"),
        ]
        for (level, prefix) in expected {
            #expect(Self.line(journal, level) == "\(prefix)\(level) mdegate: a=1 b=2 [MDEGate] request finished\n")
        }
    }

    @Test("outside journald a text line starts with the time and the level, metadata sorted")
    func text() {
        let line = Self.line(LogLineFormat(json: false, journal: false), .warning)
        #expect(line.range(of: #"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4} warning mdegate: a=1 b=2 \[MDEGate\] request finished\n$"#, options: .regularExpression) != nil, "\(line)")
    }

    @Test("a JSON line is one object with time, level, label, message, metadata and source; under journald, the prefix and no time")
    func json() throws {
        let metadata: Logger.Metadata = ["uid": "1000", "list": ["x", "y"], "nested": ["k": "v"]]
        let line = Self.line(LogLineFormat(json: true, journal: false), .info, metadata: metadata)
        #expect(line.hasSuffix("\n") && !line.dropLast().contains("\n"))
        let object = try #require(try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])
        #expect(object["level"] as? String == "info")
        #expect(object["label"] as? String == "mdegate")
        #expect(object["message"] as? String == "request finished")
        #expect(object["source"] as? String == "MDEGate")
        #expect((object["time"] as? String)?.hasPrefix("2025-12-03T") == true, "\(object)")
        let fields = try #require(object["metadata"] as? [String: Any])
        #expect(fields["uid"] as? String == "1000")
        #expect(fields["list"] as? [String] == ["x", "y"])
        #expect((fields["nested"] as? [String: String]) == ["k": "v"])

        let journal = Self.line(LogLineFormat(json: true, journal: true), .error, metadata: [:])
        #expect(journal.hasPrefix("<3>{"))
        let stripped = try #require(try JSONSerialization.jsonObject(with: Data(journal.dropFirst(3).utf8)) as? [String: Any])
        #expect(stripped["time"] == nil, "journald stamps the line itself")
    }

    @Test("what a client sent stays inside its line: no forged line, no forged journal priority")
    func clientControlCharacters() {
        // What the local API logs for `GET /v1/requests?uid=%0A%3C0%3Eforged%0D`: the decoded
        // query value, quoted in the reason.
        let metadata: Logger.Metadata = ["reason": "uid \"\n<0>forged\r\" is not a user id", "status": "400"]
        let formats = [
            LogLineFormat(json: false, journal: true), LogLineFormat(json: false, journal: false),
            LogLineFormat(json: true, journal: true),
        ]
        for format in formats {
            let line = format.line(
                time: Self.time, level: .notice, label: "mdegate", message: "request refused\u{1B}[2J\tx",
                metadata: metadata, source: "MDEGate")
            #expect(line.utf8.filter { $0 == 10 || $0 == 13 }.count == 1 && line.utf8.last == 10, "\(line.debugDescription)")
        }
        let journal = LogLineFormat(json: false, journal: true).line(
            time: Self.time, level: .notice, label: "mdegate", message: "request refused\u{1B}[2J\tx",
            metadata: metadata, source: "MDEGate")
        #expect(journal == #"<5>notice mdegate: reason=uid "\n<0>forged\r" is not a user id status=400 [MDEGate] request refused\u{1b}[2J"# + "\tx\n")
    }

    @Test("JOURNAL_STREAM counts only when it names this process's stderr")
    func journalStreamMatch() {
        var status = stat()
        fstat(STDERR_FILENO, &status)
        #expect(LogLineFormat.stderrIsJournal(environment: ["JOURNAL_STREAM": "\(status.st_dev):\(status.st_ino)"]))
        #expect(!LogLineFormat.stderrIsJournal(environment: ["JOURNAL_STREAM": "\(status.st_dev):\(status.st_ino + 1)"]))
        #expect(!LogLineFormat.stderrIsJournal(environment: ["JOURNAL_STREAM": "garbage"]))
        #expect(!LogLineFormat.stderrIsJournal(environment: [:]))
    }
}
