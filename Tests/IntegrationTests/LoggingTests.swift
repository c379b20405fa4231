import Foundation
import Testing

/// What the daemon writes to stderr, as journald and log shippers read it.
@Suite("Logs: journald priorities and JSON lines", .timeLimit(.minutes(HarnessTime.suiteMinutes)))
struct LoggingTests {
    @Test("with JOURNAL_STREAM naming its stderr, every line has a priority prefix and no timestamp; warnings are <4>")
    func journald() async throws {
        var options = GatewayOptions()
        options.journalStream = true
        options.logLevel = "info"
        try await withRig(gateway: options) { rig in
            // A 429 first: its pause is logged as a warning.
            try await rig.simulator.setFaults(["next429": ["count": 1, "retryAfter": 1]])
            let done = try await rig.client.cancel(machineActionID(), client: "journal-test")
            #expect(done.status == 200, "\(done.summary)")
            let refused = try await rig.client.cancel("not-a-guid")
            #expect(refused.status == 400)
            try await rig.gateway.process.waitForLine(containing: "request finished")
            // The answer can reach the test before the log line does.
            try await rig.gateway.process.waitForLine(containing: "request refused")
            let lines = rig.gateway.process.lines(.stderr).filter { !$0.isEmpty }
            #expect(!lines.isEmpty)
            for line in lines {
                #expect(line.range(of: #"^<[0-7]>"#, options: .regularExpression) != nil, "no priority prefix: \(line)")
                #expect(line.range(of: #"^<\d>\d{4}-\d\d-\d\d"#, options: .regularExpression) == nil, "a timestamp: \(line)")
            }
            #expect(lines.contains { $0.hasPrefix("<5>notice mdegate:") && $0.contains("mdegate is ready") }, "\(lines)")
            let finished = try #require(lines.first { $0.contains("request finished") }, "\(lines)")
            #expect(finished.hasPrefix("<6>info "), "\(finished)")
            #expect(finished.contains("uid=\(getuid())") && finished.contains("pid=") && finished.contains("client=journal-test"), "\(finished)")
            #expect(lines.contains { $0.hasPrefix("<5>notice ") && $0.contains("request refused") }, "\(lines)")
            #expect(lines.contains { $0.hasPrefix("<4>warning ") && $0.contains("upstream answered 429") }, "\(lines)")
        }
    }

    @Test("JOURNAL_STREAM that names another stream is ignored: lines keep their timestamps")
    func journalStreamOfAnotherFile() async throws {
        var options = GatewayOptions()
        options.environment = ["JOURNAL_STREAM": "1:1"]
        options.logLevel = "info"
        try await withRig(gateway: options) { rig in
            let lines = rig.gateway.process.lines(.stderr).filter { !$0.isEmpty }
            #expect(!lines.isEmpty)
            #expect(lines.allSatisfy { $0.range(of: #"^\d{4}-\d\d-\d\dT"#, options: .regularExpression) != nil }, "\(lines)")
        }
    }

    @Test("log.format json: every line is one JSON object; a finished request says who, what and how it ended")
    func jsonLines() async throws {
        var options = GatewayOptions()
        options.logFormat = "json"
        try await withRig(gateway: options) { rig in
            let target = machineActionID()
            let done = try await rig.client.cancel(target, client: "json-test")
            #expect(done.status == 200, "\(done.summary)")
            try await rig.gateway.process.waitForLine(containing: "request finished")
            let lines = rig.gateway.process.lines(.stderr).filter { !$0.isEmpty }
            var finished: [String: Any]?
            for line in lines {
                let object = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any]
                #expect(object != nil, "not a JSON object: \(line)")
                guard let object else { continue }
                for key in ["time", "level", "label", "message", "source"] {
                    #expect(object[key] is String, "\(key) missing in \(line)")
                }
                if object["message"] as? String == "request finished" { finished = object }
            }
            let metadata = try #require(finished?["metadata"] as? [String: Any], "\(lines)")
            #expect(metadata["target"] as? String == target)
            #expect(metadata["api"] as? String == "cancel")
            #expect(metadata["status"] as? String == "200")
            #expect(metadata["client"] as? String == "json-test")
            #expect(metadata["uid"] as? String == "\(getuid())")
            #expect(metadata["attempts"] as? String == "1")
            #expect(metadata["durationMs"] != nil)
            let token = try String(contentsOfFile: rig.directory.file("token"), encoding: .utf8)
            #expect(!lines.contains { $0.contains(token) }, "the token never appears in the log")
        }
    }
}
