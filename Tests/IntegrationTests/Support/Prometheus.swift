import Foundation
import MDEGateTransport

/// One sample of Prometheus's text format: `name{label="value",...} value`.
struct MetricSample: Sendable, Equatable {
    var name: String
    var labels: [String: String]
    var value: Double
}

/// A `/metrics` answer, parsed enough to look samples up (the format is checked by promtool).
struct Exposition: Sendable {
    let text: String
    let samples: [MetricSample]

    init(_ text: String) throws {
        self.text = text
        var samples: [MetricSample] = []
        for line in text.split(separator: "\n") where !line.hasPrefix("#") && !line.isEmpty {
            samples.append(try Self.sample(line))
        }
        self.samples = samples
    }

    /// The value of the series `name` whose labels are exactly `labels`; nil if there is none.
    func value(_ name: String, _ labels: [String: String] = [:]) -> Double? {
        samples.first { $0.name == name && $0.labels == labels }?.value
    }

    /// Every series of `name`.
    func series(_ name: String) -> [MetricSample] {
        samples.filter { $0.name == name }
    }

    private static func sample(_ line: Substring) throws -> MetricSample {
        var labels: [String: String] = [:]
        let name: Substring
        var rest: Substring
        if let brace = line.firstIndex(of: "{") {
            name = line[..<brace]
            rest = line[line.index(after: brace)...]
            while !rest.hasPrefix("}") {
                guard let equals = rest.firstIndex(of: "="), rest[rest.index(after: equals)...].hasPrefix("\"") else {
                    throw HarnessError("unreadable labels in \(line)")
                }
                let key = String(rest[..<equals])
                var value = ""
                var index = rest.index(equals, offsetBy: 2)
                while index < rest.endIndex, rest[index] != "\"" {
                    if rest[index] == "\\" { index = rest.index(after: index) }
                    guard index < rest.endIndex else { break }
                    value.append(rest[index])
                    index = rest.index(after: index)
                }
                guard index < rest.endIndex else { throw HarnessError("unterminated label value in \(line)") }
                labels[key] = value
                rest = rest[rest.index(after: index)...]
                if rest.hasPrefix(",") { rest = rest.dropFirst() }
            }
            rest = rest.dropFirst()
        } else {
            guard let space = line.firstIndex(of: " ") else { throw HarnessError("no value in \(line)") }
            name = line[..<space]
            rest = line[space...]
        }
        let fields = rest.split(separator: " ")
        guard let first = fields.first, let value = Double(first) ?? (first == "+Inf" ? .infinity : nil) else {
            throw HarnessError("no value in \(line)")
        }
        return MetricSample(name: String(name), labels: labels, value: value)
    }
}

/// Debian's Prometheus server, started by a test: a configuration of the test's own, its data
/// in a temporary directory, its web API on a free loopback port.
final class TestPrometheus: Sendable {
    let process: TestProcess
    let directory: TemporaryDirectory
    let port: Int
    let api: HTTPClient

    static let executable = URL(fileURLWithPath: "/usr/bin/prometheus")
    static let promtool = URL(fileURLWithPath: "/usr/bin/promtool")

    /// Scrapes `targets` (`host:port`) as job `mdegate` every `interval`.
    init(scraping targets: [String], interval: String = "1s") async throws {
        guard FileManager.default.isExecutableFile(atPath: Self.executable.path) else {
            throw HarnessError("no Prometheus server at \(Self.executable.path); the test command installs Debian's prometheus (scripts/install-deps.sh --tests)")
        }
        directory = try TemporaryDirectory()
        let config = """
            global:
              scrape_interval: \(interval)
              evaluation_interval: \(interval)
            scrape_configs:
              - job_name: mdegate
                scrape_timeout: \(interval)
                static_configs:
                  - targets: [\(targets.map { "\"\($0)\"" }.joined(separator: ", "))]
            """
        try config.write(toFile: directory.file("prometheus.yml"), atomically: true, encoding: .utf8)
        port = try freeLoopbackPort()
        process = try await TestProcess(
            name: "prometheus", executable: Self.executable,
            arguments: [
                "--config.file=\(directory.file("prometheus.yml"))",
                "--storage.tsdb.path=\(directory.file("data"))",
                "--web.listen-address=127.0.0.1:\(port)",
            ],
            environment: TestProcess.environment())
        api = try HTTPClient(baseURL: "http://127.0.0.1:\(port)")
        try await process.waitForLine(containing: "Server is ready to receive web requests", in: [.stderr], timeout: .seconds(60))
    }

    /// The instant vector of `query` as (labels, value) pairs, from `/api/v1/query`.
    func query(_ query: String) async throws -> [(labels: [String: String], value: Double)] {
        let encoded = query.addingPercentEncoding(withAllowedCharacters: .alphanumerics) ?? query
        let response = try await api.get("/api/v1/query?query=\(encoded)")
        guard response.status == 200,
            let document = try JSONSerialization.jsonObject(with: Data(response.body)) as? [String: Any],
            let data = document["data"] as? [String: Any], let result = data["result"] as? [[String: Any]]
        else { throw HarnessError("query \(query): \(response.summary)") }
        return result.compactMap { series in
            guard let metric = series["metric"] as? [String: String], let pair = series["value"] as? [Any],
                pair.count == 2, let text = pair[1] as? String, let value = Double(text)
            else { return nil }
            return (metric, value)
        }
    }

    func stop() async {
        _ = await process.stop()
        api.shutdown()
        directory.remove()
    }
}

/// Runs `promtool` with `arguments` to the end; its output and exit status.
func promtool(_ arguments: [String], input: String? = nil) async throws -> (status: Int32, output: String) {
    guard FileManager.default.isExecutableFile(atPath: TestPrometheus.promtool.path) else {
        throw HarnessError("no promtool at \(TestPrometheus.promtool.path); the test command installs Debian's prometheus (scripts/install-deps.sh --tests)")
    }
    var arguments = arguments
    var scratch: TemporaryDirectory?
    if let input {
        // promtool check metrics reads standard input; TestProcess gives children none, so
        // the text goes through a file and a shell.
        let directory = try TemporaryDirectory()
        scratch = directory
        try input.write(toFile: directory.file("input"), atomically: true, encoding: .utf8)
        arguments = ["-c", "exec \(TestPrometheus.promtool.path) \(arguments.joined(separator: " ")) < \(directory.file("input"))"]
    }
    defer { scratch?.remove() }
    let process = try await TestProcess(
        name: "promtool", executable: input == nil ? TestPrometheus.promtool : URL(fileURLWithPath: "/bin/sh"),
        arguments: arguments, environment: TestProcess.environment())
    let end = try await process.waitForExit(timeout: .seconds(60))
    let output = (process.lines(.stdout) + process.lines(.stderr)).joined(separator: "\n")
    if case .exited(let code) = end { return (code, output) }
    return (-1, output)
}
