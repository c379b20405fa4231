import Foundation
import MDEGateWire

/// Human-readable renderings of the gateway's JSON documents for `mdegate status` and
/// `mdegate request`: aligned tables an operator can read at 3 a.m.
public enum Rendering {
    public static func status(_ status: StatusDocument, now: Date = Date()) -> String {
        var lines: [String] = []
        lines.append("QUOTA (guard \(status.guardMs) ms)")
        lines += table(
            ["LIMIT", "USED", "FREE", "NEXT FREE SLOT"],
            status.limits.map { limit in
                [
                    limit.spec, "\(limit.used)/\(limit.calls)", "\(max(0, limit.calls - limit.used))",
                    limit.nextFreeAt.map { relative($0, now: now) } ?? "now",
                ]
            })
        lines.append("")
        let pause = status.pausedUntil.map { "paused until \(relative($0, now: now)) after an upstream 429" } ?? "not paused"
        lines.append("DISPATCH  \(pause); \(status.inFlight) in flight; \(status.queue.depth) waiting")
        if !status.queue.clients.isEmpty {
            lines.append("")
            lines += table(["CLIENT", "QUEUED"], status.queue.clients.map { [$0.client, "\($0.depth)"] })
        }
        lines.append("")
        lines.append(
            "UPSTREAM  \(status.upstream.baseUrl)  last status \(status.upstream.lastStatus.map(String.init) ?? "-")"
                + (status.upstream.lastError.map { "  last error: \($0)" } ?? ""))
        lines.append(
            "AUTH      \(status.auth.mode)"
                + (status.auth.tokenExpiresAt.map { "  token expires \($0)" } ?? "")
                + (status.auth.lastError.map { "  last error: \($0)" } ?? "  ok"))
        return lines.joined(separator: "\n")
    }

    public static func record(_ record: JSONValue, now: Date = Date()) -> String {
        func text(_ key: String) -> String {
            switch record[key] {
            case .string(let value): return value
            case .number(let value): return value.rounded() == value ? String(Int64(value)) : String(value)
            case .bool(let value): return String(value)
            case .none, .null: return "-"
            default: return "-"
            }
        }
        var rows: [[String]] = [
            ["request", text("id")],
            ["machine action", text("machineActionId")],
            ["state", text("state")],
        ]
        if record["position"] != nil {
            rows.append(["position", text("position")])
            rows.append(["estimated dispatch", relative(text("estimatedDispatchAt"), now: now)])
        }
        var clientText = "-"
        if case .object(let client) = record["client"] {
            let uid = client["uid"].map { JSONValue.text($0) } ?? "?"
            let pid = client["pid"].map { JSONValue.text($0) } ?? "?"
            let name = client["name"].flatMap(\.stringValue).map { " (\($0))" } ?? ""
            clientText = "uid \(uid) pid \(pid)\(name)"
        }
        rows += [
            ["client", clientText],
            ["comment", text("comment")],
            ["attempts", text("attempts")],
            ["joined", text("joined")],
            ["created", text("createdAt")],
            ["completed", text("completedAt")],
        ]
        if case .object(let response) = record["response"] {
            rows.append(["upstream status", response["status"].map { JSONValue.text($0) } ?? "-"])
            if let body = response["body"] {
                let bodyText = String(decoding: JSON.encode(body), as: UTF8.self)
                rows.append(["upstream body", bodyText.count > 200 ? String(bodyText.prefix(200)) + "…" : bodyText])
            }
        }
        if record["lastError"] != nil { rows.append(["last error", text("lastError")]) }
        return table(["FIELD", "VALUE"], rows).joined(separator: "\n")
    }

    /// "in 12.3 s (2026-11-24T04:05:12.000Z)" for a future ISO time, the time alone otherwise.
    static func relative(_ iso: String, now: Date) -> String {
        guard let date = try? Date(iso, strategy: Date.ISO8601FormatStyle(includingFractionalSeconds: true)) else {
            return iso
        }
        let seconds = date.timeIntervalSince(now)
        guard seconds > 0 else { return iso }
        return String(format: "in %.1f s (%@)", seconds, iso)
    }

    static func table(_ header: [String], _ rows: [[String]]) -> [String] {
        let all = [header] + rows
        let widths = header.indices.map { column in all.map { $0[column].count }.max() ?? 0 }
        return all.map { row in
            row.enumerated().map { column, cell in
                column == row.count - 1 ? cell : cell.padding(toLength: widths[column], withPad: " ", startingAt: 0)
            }.joined(separator: "  ")
        }
    }
}

extension JSONValue {
    static func text(_ value: JSONValue) -> String {
        switch value {
        case .string(let text): return text
        case .number(let number): return number.rounded() == number ? String(Int64(number)) : String(number)
        case .bool(let flag): return String(flag)
        case .null: return "-"
        default: return String(decoding: JSON.encode(value), as: UTF8.self)
        }
    }
}
