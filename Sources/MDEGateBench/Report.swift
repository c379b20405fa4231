import Foundation

/// One scenario's figures: a readable block for a person, and a JSON line for notes.
///
/// A target that is missed is printed as MISSED, never hidden, and the run still exits 0: the
/// benchmark reports, tests assert.
struct Report: Sendable {
    enum Verdict: Sendable {
        case met, missed, info

        var label: String {
            switch self {
            case .met: "met"
            case .missed: "MISSED"
            case .info: ""
            }
        }
    }

    struct Row: Sendable {
        var label: String
        var value: String
        var target: String
        var verdict: Verdict
    }

    enum Scalar: Sendable {
        case int(Int)
        case double(Double)
        case string(String)
        case bool(Bool)
        case null

        var json: String {
            switch self {
            case .int(let value): String(value)
            case .double(let value): value.isFinite ? String(format: "%.4g", value) : "null"
            case .string(let value): Report.quoted(value)
            case .bool(let value): value ? "true" : "false"
            case .null: "null"
            }
        }
    }

    var title: String
    var rows: [Row] = []
    var notes: [String] = []
    var summary: [(key: String, value: Scalar)] = []

    init(scenario: String, title: String) {
        self.title = title
        summary.append(("scenario", .string(scenario)))
        summary.append(("build", .string(buildConfiguration)))
    }

    /// A figure without a target.
    mutating func info(_ label: String, _ value: String, key: String? = nil, _ scalar: Scalar = .null) {
        rows.append(Row(label: label, value: value, target: "", verdict: .info))
        if let key { summary.append((key, scalar)) }
    }

    /// A figure with a target (docs/benchmarks.md); `met` nil means it could not be measured (MISSED).
    mutating func target(_ label: String, _ value: String, target: String, met: Bool?, key: String, _ scalar: Scalar) {
        rows.append(Row(label: label, value: value, target: target, verdict: met == true ? .met : .missed))
        summary.append((key, scalar))
        summary.append((key + "_met", met.map(Scalar.bool) ?? .bool(false)))
    }

    mutating func note(_ text: String) { notes.append(text) }

    /// Adds `other`'s figures after this report's own, labels and keys prefixed: a baseline run
    /// in the same invocation.
    mutating func absorb(_ other: Report, label: String, key: String) {
        rows += other.rows.map { Row(label: label + $0.label, value: $0.value, target: $0.target, verdict: $0.verdict) }
        summary += other.summary.filter { $0.key != "scenario" && $0.key != "build" }.map { (key + $0.key, $0.value) }
        notes += other.notes.map { label + $0 }
    }

    mutating func set(_ key: String, _ value: Scalar) { summary.append((key, value)) }

    func printBlock() {
        print("== \(title)")
        let labelWidth = max(36, (rows.map(\.label.count).max() ?? 0) + 2)
        let valueWidth = max(14, (rows.map(\.value.count).max() ?? 0) + 2)
        let targetWidth = max(12, (rows.map(\.target.count).max() ?? 0) + 2)
        for row in rows {
            let target = row.target.isEmpty ? "" : "target \(row.target)"
            var line = "  " + row.label.padding(toLength: labelWidth, withPad: " ", startingAt: 0)
            line += row.value.padding(toLength: valueWidth, withPad: " ", startingAt: 0)
            line += target.padding(toLength: targetWidth + 7, withPad: " ", startingAt: 0)
            line += row.verdict.label
            while line.hasSuffix(" ") { line.removeLast() }
            print(line)
        }
        for note in notes { print("  note: \(note)") }
        print("")
    }

    var jsonLine: String {
        "{" + summary.map { "\(Report.quoted($0.key)):\($0.value.json)" }.joined(separator: ",") + "}"
    }

    static func quoted(_ text: String) -> String {
        var result = "\""
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\"": result += "\\\""
            case "\\": result += "\\\\"
            case "\n": result += "\\n"
            case _ where scalar.value < 0x20: result += String(format: "\\u%04x", scalar.value)
            default: result.unicodeScalars.append(scalar)
            }
        }
        return result + "\""
    }
}

#if DEBUG
let buildConfiguration = "debug"
#else
let buildConfiguration = "release"
#endif

/// Nearest-rank percentiles of a sample.
struct Sample: Sendable {
    let sorted: [Double]

    init(_ values: [Double]) { sorted = values.sorted() }

    var isEmpty: Bool { sorted.isEmpty }
    var count: Int { sorted.count }

    func percentile(_ p: Double) -> Double {
        guard !sorted.isEmpty else { return .nan }
        let rank = Int((p / 100 * Double(sorted.count)).rounded(.up))
        return sorted[Swift.min(Swift.max(rank, 1), sorted.count) - 1]
    }

    var p50: Double { percentile(50) }
    var p99: Double { percentile(99) }
    var max: Double { sorted.last ?? .nan }
    var min: Double { sorted.first ?? .nan }
    var mean: Double { sorted.isEmpty ? .nan : sorted.reduce(0, +) / Double(sorted.count) }
}

func ms(_ value: Double, digits: Int = 3) -> String {
    value.isFinite ? String(format: "%.\(digits)f ms", value) : "n/a"
}

func seconds(_ value: Double) -> String {
    value.isFinite ? String(format: "%.3f s", value) : "n/a"
}

func round4(_ value: Double) -> Report.Scalar {
    value.isFinite ? .double((value * 10_000).rounded() / 10_000) : .null
}
