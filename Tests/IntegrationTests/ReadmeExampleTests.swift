import Foundation
import Testing

/// The README's "From your language" examples, run as written against the real daemon, so they
/// cannot drift from what the daemon does. Each example is the fenced block after a
/// `<!-- tested: NAME -->` line; only its socket path is replaced by the rig's.
@Suite("README: the examples of \"From your language\" work as written", .timeLimit(.minutes(5)))
struct ReadmeExampleTests {
    /// The socket path the examples are written with.
    static let documentedSocket = "/run/mdegate/mdegate.sock"
    static let documentedAction = "988cc94e-7a8f-4b28-ab65-54970c5d5018"
    static let documentedClient = "soar-playbook"

    @Test("the README marks exactly the curl, Python and Node.js examples as tested")
    func markedExamples() throws {
        let examples = try Self.examples()
        #expect(examples.map(\.name).sorted() == ["curl", "node", "python"])
        for example in examples {
            #expect(example.code.contains(Self.documentedSocket), "the \(example.name) example names no socket to replace")
        }
    }

    @Test("the example sends the cancel through the daemon and prints the upstream's answer", arguments: ["curl", "python", "node"])
    func example(_ name: String) async throws {
        let example = try #require(try Self.examples().first { $0.name == name }, "no example marked <!-- tested: \(name) -->")
        let (executable, arguments) = try Self.command(for: example)
        try await withRig { rig in
            let directory = try TemporaryDirectory()
            defer { directory.remove() }
            let code = example.code.replacingOccurrences(of: Self.documentedSocket, with: rig.gateway.socketPath)
            let result = try await ExternalTools.run(executable, arguments + [code], in: directory)
            let output = "the \(name) example ended with \(result.end)\n\(code)\nstdout:\n\(result.stdout)\nstderr:\n\(result.stderr)"
            #expect(result.exitCode == 0, "\(output)")

            let (status, requestID, actionStatus) = try Self.summary(of: result.stdout, from: name)
            #expect(status == 200, "\(output)")
            #expect(actionStatus == "Cancelled", "\(output)")

            // The request id it printed is one the daemon recorded: the call went through it.
            let record = try await rig.client.record(requestID)
            #expect(record["api"]?.string == "cancel")
            #expect(record["target"]?.string == Self.documentedAction)
            #expect(record["comment"]?.string == "isolated by mistake")
            #expect(record["client"]?["name"]?.string == Self.documentedClient)
            #expect(record["client"]?["uid"]?.int == Int(getuid()))
            #expect(try await rig.simulator.stats().arrivals(for: Self.documentedAction) == 1)
        }
    }

    // MARK: Reading the README

    struct Example {
        var name: String
        var code: String
    }

    static let readme = ExternalTools.packageRoot.appendingPathComponent("README.md").path

    /// Every fenced block right after a `<!-- tested: NAME -->` line.
    static func examples() throws -> [Example] {
        let lines = try String(contentsOfFile: readme, encoding: .utf8).components(separatedBy: "\n")
        var examples: [Example] = []
        for (index, line) in lines.enumerated() {
            guard line.hasPrefix("<!-- tested: "), line.hasSuffix(" -->") else { continue }
            let name = String(line.dropFirst("<!-- tested: ".count).dropLast(" -->".count))
            guard index + 1 < lines.count, lines[index + 1].hasPrefix("```"),
                let end = lines[(index + 2)...].firstIndex(where: { $0.hasPrefix("```") })
            else {
                throw HarnessError("README.md line \(index + 1): \(line) is not followed by a fenced block")
            }
            examples.append(Example(name: name, code: lines[(index + 2)..<end].joined(separator: "\n")))
        }
        return examples
    }

    /// How an example runs: the shell for curl, the test environment's Python (it has httpx), node.
    static func command(for example: Example) throws -> (URL, [String]) {
        switch example.name {
        case "curl": (URL(fileURLWithPath: "/bin/sh"), ["-e", "-c"])
        case "python": (try ExternalTools.python(), ["-c"])
        case "node": (try ExternalTools.node(), ["-e"])
        default: throw HarnessError("no way to run the README example \(example.name)")
        }
    }

    /// The answer's status, the `Mdegate-Request-Id` and the action's `status`: the Python and
    /// Node examples print them on one line; curl prints the answer with its headers (`-i`).
    static func summary(of stdout: String, from name: String) throws -> (Int, String, String) {
        if name != "curl" {
            let fields = stdout.split(whereSeparator: \.isWhitespace).map(String.init)
            guard fields.count == 3, let status = Int(fields[0]) else {
                throw HarnessError("the \(name) example printed \(stdout), not STATUS REQUEST-ID ACTION-STATUS")
            }
            return (status, fields[1], fields[2])
        }
        // curl ends header lines with CRLF, which Swift reads as one Character: split on newlines
        // of every kind.
        let lines = stdout.split(whereSeparator: \.isNewline).map { $0.trimmingCharacters(in: .whitespaces) }
        guard let statusLine = lines.first, statusLine.hasPrefix("HTTP/1.1 "),
            let status = Int(statusLine.split(separator: " ")[1]),
            let idLine = lines.first(where: { $0.lowercased().hasPrefix("mdegate-request-id:") }),
            let body = lines.last(where: { $0.hasPrefix("{") })
        else {
            throw HarnessError("curl printed no status line, Mdegate-Request-Id or JSON body:\n\(stdout)")
        }
        let requestID = idLine.dropFirst("mdegate-request-id:".count).trimmingCharacters(in: .whitespaces)
        return (status, requestID, try JSON(parsing: body)["status"]?.string ?? "")
    }
}
