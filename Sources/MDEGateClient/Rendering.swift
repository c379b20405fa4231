import Foundation
import MDEGateWire

/// Human-readable renderings of the gateway's JSON documents for `mdegate status` and
/// `mdegate request`: aligned tables an operator can read at 3 a.m.
public enum Rendering {
    /// The status document for an operator, at most 80 columns wide for the usual API names:
    /// one group of rows per API that has something to show (quota used, a queue, a pause), and
    /// the idle APIs folded into one line per set of limits.
    public static func status(_ status: StatusDocument, now: Date = Date()) -> String {
        var lines: [String] = []
        let shared = status.sharedQuota
        lines.append("QUOTA PER API (guard \(status.guardMs) ms\(shared == nil ? "" : "; USED is this host's, the shared use is below"))")
        lines += quota(status.apis, now: now, shared: shared != nil)
        lines.append("")
        let charts = lastHour(status.apis)
        if !charts.isEmpty {
            lines += charts
            lines.append("")
        }
        if let shared {
            lines += sharedQuota(shared, now: now)
            lines.append("")
        }
        lines.append("DISPATCH  \(status.inFlight) in flight; \(status.queue.depth) waiting")
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

    /// The shared quota: the database and its health, then every limit in use with each host's
    /// part of it.
    ///
    ///     SHARED QUOTA  postgresql://mdegate@db.example:5432/mdegate (TLS verified)
    ///       key "contoso/playbooks", this host "soar-1": database reachable
    ///     API / LIMIT      USED  BY HOST
    ///     cancel 100/1m    37    soar-1 20, cron-1 17
    static func sharedQuota(_ shared: StatusDocument.SharedQuota, now: Date) -> [String] {
        var lines = ["SHARED QUOTA  \(shared.database)"]
        var health = "  key \"\(shared.key)\", this host \"\(shared.host)\": "
        if shared.reachable {
            health += "database reachable"
        } else {
            health += "DATABASE UNAVAILABLE"
                + (shared.unreachableSince.map { " since \(relative($0, now: now))" } ?? "")
                + ", so nothing is sent upstream (requests are kept)"
                + (shared.lastError.map { ": \($0)" } ?? "")
        }
        lines += wrapped(health)
        guard let usage = shared.usage else {
            lines.append("  (every host's use could not be read from the database for this status)")
            return lines
        }
        guard !usage.isEmpty else {
            lines.append("  no host spent any of it in the current windows")
            return lines
        }
        lines += table(
            ["API / LIMIT", "USED", "BY HOST"],
            usage.map { use in
                ["\(use.api) \(use.spec)", "\(use.used)", use.hosts.map { "\($0.host) \($0.used)" }.joined(separator: ", ")]
            })
        return lines
    }

    /// The rows of the quota: per busy API a title line (name, queue), its pause if any, and one
    /// row per limit; then the idle APIs, one line per set of limits.
    ///
    ///     API / LIMIT  USED     NEXT FREE SLOT
    ///     cancel: 3 queued
    ///       paused for 4m05s (until 2026-11-24T04:09:12.000Z) after an upstream 429
    ///       100/1m     100/100  in 12.3 s (2026-11-24T04:05:12.000Z)
    ///       1500/1h    371/1500 now
    ///     9 other APIs idle (100/1m, 1500/1h)
    static func quota(_ apis: [StatusDocument.APIState], now: Date, shared: Bool = false) -> [String] {
        let busy = apis.filter { !isIdle($0) }
        let idle = apis.filter(isIdle)
        var lines: [String] = []
        if !busy.isEmpty {
            let rows = busy.flatMap { api in
                api.limits.map { limit in
                    [
                        "  " + limit.spec, "\(limit.used)/\(limit.calls)",
                        // With a shared quota, the database alone knows the next free slot.
                        limit.nextFreeAt.map { relative($0, now: now) } ?? (shared ? "-" : "now"),
                    ]
                }
            }
            // One table, so the columns line up across APIs; each API's title goes above its rows.
            let aligned = table(["API / LIMIT", "USED", "NEXT FREE SLOT"], rows)
            lines.append(aligned[0])
            var next = 1
            for api in busy {
                lines.append("\(api.name): \(api.queued == 0 ? "nothing" : String(api.queued)) queued")
                if let pausedUntil = api.pausedUntil { lines += wrapped("  " + pause(pausedUntil, now: now)) }
                lines += aligned[next..<next + api.limits.count]
                next += api.limits.count
            }
        }
        // Idle APIs with the same limits share a line; a small group of exceptions names its APIs.
        var groups: [(specs: [String], names: [String])] = []
        for api in idle {
            let specs = api.limits.map(\.spec)
            if let index = groups.firstIndex(where: { $0.specs == specs }) {
                groups[index].names.append(api.name)
            } else {
                groups.append((specs, [api.name]))
            }
        }
        for group in groups.sorted(by: { $0.names.count > $1.names.count }) {
            let count = group.names.count
            let quantity = busy.isEmpty && groups.count == 1 && count > 1 ? "all \(count)" : "\(count)"
            let other = busy.isEmpty ? "" : " other"
            var line = "\(quantity)\(other) API\(count == 1 ? "" : "s") idle (\(group.specs.joined(separator: ", ")))"
            if groups.count > 1, count <= 3 { line += ": " + group.names.joined(separator: ", ") }
            lines += wrapped(line)
        }
        return lines
    }

    /// The last hour of every API that made attempts in it: attempts per minute as a bar chart
    /// scaled to what the limits allow in a minute, 66 columns wide, no colour needed. A `!` on
    /// the axis marks a minute with a 429.
    ///
    ///     LAST 60 MINUTES, attempts per minute (! a minute with a 429)
    ///     cancel: 371 in the hour of 1500 allowed; busiest minute 100 of 100
    ///      100 ┤                                    ▂▅████████
    ///          │                          ▁▃▆██████████████████
    ///          │                    ▁▃▆████████████████████████
    ///        0 ┼─────────────────────────────────────────!──────────────────
    ///           -60m           -45m           -30m           -15m        now
    static func lastHour(_ apis: [StatusDocument.APIState]) -> [String] {
        let used = apis.compactMap { api in api.lastHour.map { (api, $0) } }.filter { $0.1.attempts.contains { $0 > 0 } }
        guard !used.isEmpty else { return [] }
        var lines = ["LAST 60 MINUTES, attempts per minute (! a minute with a 429)"]
        for (api, timeline) in used {
            let perMinute = capacity(api.limits, seconds: 60)
            let perHour = capacity(api.limits, seconds: 3600)
            let total = timeline.attempts.reduce(0, +)
            let busiest = timeline.attempts.max() ?? 0
            lines.append(
                "\(api.name): \(total) in the hour\(perHour.map { " of \($0) allowed" } ?? ""); busiest minute \(busiest)"
                    + (perMinute.map { " of \($0)" } ?? ""))
            lines += chart(timeline, scale: max(perMinute ?? busiest, busiest, 1))
        }
        return lines
    }

    /// What the limits allow in `seconds` at most: a limit over a window at least that long
    /// allows its calls; a shorter one, its calls once per window that fits.
    static func capacity(_ limits: [StatusDocument.LimitState], seconds: Double) -> Int? {
        limits.map { limit in
            limit.windowSeconds >= seconds
                ? limit.calls : limit.calls * Int((seconds / max(limit.windowSeconds, 0.001)).rounded(.up))
        }.min()
    }

    /// Three rows of eighth blocks (24 steps from 0 to `scale`), the axis with the 429 marks,
    /// and the minute labels. A minute with any attempt shows at least the lowest block.
    static func chart(_ timeline: StatusDocument.Timeline, scale: Int) -> [String] {
        let blocks: [Character] = [" ", "▁", "▂", "▃", "▄", "▅", "▆", "▇", "█"]
        let rows = 3
        let levels = timeline.attempts.map { count -> Int in
            guard count > 0 else { return 0 }
            return max(1, min(rows * 8, Int((Double(count) / Double(scale) * Double(rows * 8)).rounded())))
        }
        var lines: [String] = []
        for row in (0..<rows).reversed() {
            let label = row == rows - 1 ? String(scale) : ""
            let bar = String(levels.map { blocks[max(0, min(8, $0 - row * 8))] })
            lines.append(String(repeating: " ", count: max(0, 5 - label.count)) + label + (row == rows - 1 ? " ┤" : " │") + bar)
        }
        let axis = String(timeline.throttled.map { $0 > 0 ? Character("!") : Character("─") })
        lines.append("    0 ┼" + axis)
        var labels = [Character](repeating: " ", count: timeline.attempts.count + 4)
        for (column, text) in [(0, "-60m"), (15, "-45m"), (30, "-30m"), (45, "-15m"), (timeline.attempts.count - 3, "now")] {
            for (offset, character) in text.enumerated() where column + offset < labels.count {
                labels[column + offset] = character
            }
        }
        lines.append("       " + String(labels))
        return lines.map { $0.replacingOccurrences(of: "\\s+$", with: "", options: .regularExpression) }
    }

    /// "paused for 30m00s (until 2026-11-24T04:35:12.000Z) after an upstream 429".
    static func pause(_ iso: String, now: Date) -> String {
        guard let date = Self.date(iso),
            date > now
        else { return "paused until \(iso) after an upstream 429" }
        return "paused for \(duration(date.timeIntervalSince(now))) (until \(iso)) after an upstream 429"
    }

    /// Nothing spent in any window, nothing queued, not paused.
    static func isIdle(_ api: StatusDocument.APIState) -> Bool {
        api.queued == 0 && api.pausedUntil == nil && api.limits.allSatisfy { $0.used == 0 }
    }

    /// `text` broken at spaces into lines of at most `width` columns (a longer word keeps its own
    /// line); the first line keeps `text`'s leading spaces, the others get two more.
    static func wrapped(_ text: String, width: Int = 80) -> [String] {
        let lead = String(text.prefix { $0 == " " })
        let indent = lead + "    "
        var lines: [String] = []
        var current = ""
        for word in text.split(separator: " ") {
            if current.isEmpty {
                current = (lines.isEmpty ? lead : indent) + word
            } else if current.count + 1 + word.count > width {
                lines.append(current)
                current = indent + word
            } else {
                current += " " + word
            }
        }
        lines.append(current)
        return lines
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
        var rows: [[String]] = [["request", text("id")], ["api", text("api")]]
        // The target under the name of what it is: a machine action, a machine, or nothing (the listing).
        if record["machineActionId"]?.stringValue != nil {
            rows.append(["machine action", text("machineActionId")])
        } else if let target = record["target"]?.stringValue, !target.isEmpty {
            rows.append(["machine", target])
        }
        if case .object(let options) = record["options"], !options.isEmpty {
            let text = options.sorted { $0.key < $1.key }.map { "\($0.key)=\(JSONValue.text($0.value))" }
            rows.append(["options", text.joined(separator: ", ")])
        }
        rows.append(["state", text("state")])
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

    /// The audit listing as a table, newest first; a last line with the next page's cursor.
    public static func requests(_ list: RequestListDocument) -> String {
        guard !list.requests.isEmpty else { return "no requests match" }
        let rows = list.requests.map { record -> [String] in
            let created = date(record.createdAt)
            var wait = "-"
            if let created, let sent = record.sentAt.flatMap(date) {
                let seconds = max(sent.timeIntervalSince(created), 0)
                wait = seconds < 1 ? "\(Int((seconds * 1000).rounded())) ms" : duration(seconds)
            }
            return [
                created.map(shortTime) ?? record.createdAt,
                record.client.name ?? "-",
                "\(record.client.uid)/\(record.client.pid)",
                record.api,
                record.target.isEmpty ? "-" : record.target,
                record.state.rawValue,
                record.response.map { String($0.status) } ?? "-",
                String(record.attempts),
                wait,
            ]
        }
        var lines = table(
            ["CREATED (UTC)", "CLIENT", "UID/PID", "API", "TARGET", "STATE", "STATUS", "ATTEMPTS", "QUEUE WAIT"], rows)
        if let next = list.next { lines.append("more: add --cursor \(next)") }
        return lines.joined(separator: "\n")
    }

    /// An instant as the gateway writes it (ISO 8601 with milliseconds).
    static func date(_ iso: String) -> Date? {
        try? Date(iso, strategy: Date.ISO8601FormatStyle(includingFractionalSeconds: true))
    }

    /// `12-03 04:01:02`: month, day and time in UTC.
    private static func shortTime(_ date: Date) -> String {
        var calendar = Calendar(identifier: .gregorian)
        calendar.timeZone = TimeZone(identifier: "UTC")!
        let parts = calendar.dateComponents([.month, .day, .hour, .minute, .second], from: date)
        return String(
            format: "%02d-%02d %02d:%02d:%02d", parts.month ?? 0, parts.day ?? 0, parts.hour ?? 0, parts.minute ?? 0,
            parts.second ?? 0)
    }

    /// "in 12.3 s (2026-11-24T04:05:12.000Z)" for a future ISO time ("in 4m05s", "in 1h02m" when
    /// farther), the time alone otherwise.
    static func relative(_ iso: String, now: Date) -> String {
        guard let date = Self.date(iso) else {
            return iso
        }
        let seconds = date.timeIntervalSince(now)
        guard seconds > 0 else { return iso }
        return "in \(duration(seconds)) (\(iso))"
    }

    /// "12.3 s" under two minutes, "4m05s" under two hours, "3h02m" beyond.
    static func duration(_ seconds: Double) -> String {
        if seconds < 120 { return String(format: "%.1f s", seconds) }
        let whole = Int(seconds.rounded(.up))
        if whole < 7200 { return String(format: "%dm%02ds", whole / 60, whole % 60) }
        return String(format: "%dh%02dm", whole / 3600, (whole % 3600) / 60)
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
