import Foundation
import MDEGateCore
import MDEGateWire

extension RequestQuery {
    /// The parameters of `GET /v1/requests`, each checked: `client`, `uid`, `state` (one or a
    /// comma-separated list), `api`, `machineActionId` (or `target`, for machine ids), `since`
    /// and `until` (ISO 8601, or a duration such as `1h` meaning that long ago), `limit`
    /// (1–1000) and `cursor` (the `next` of the page before). An unknown or bad parameter is a
    /// problem naming it.
    static func parse(_ query: Substring?, now: Timestamp) -> Result<RequestQuery, ValidationProblem> {
        var result = RequestQuery()
        guard let query, !query.isEmpty else { return .success(result) }
        func problem(_ message: String) -> Result<RequestQuery, ValidationProblem> {
            .failure(ValidationProblem(code: "InvalidQuery", message: message))
        }
        guard let items = URLComponents(string: "/?" + query)?.queryItems else {
            return problem("the query string cannot be read as name=value pairs")
        }
        var seen: Set<String> = []
        for item in items {
            let value = item.value ?? ""
            guard seen.insert(item.name).inserted else { return problem("\(item.name) is given twice") }
            switch item.name {
            case "client":
                result.clientName = value
            case "uid":
                guard let uid = UInt32(value) else { return problem("uid \(quoted(value)) is not a user id") }
                result.uid = uid
            case "state":
                var states: [RequestState] = []
                for name in value.split(separator: ",") {
                    guard let state = RequestState(rawValue: String(name)) else {
                        return problem("state \(quoted(String(name))) is not a state; write queued, sending, done, failed or withdrawn (or several, comma-separated)")
                    }
                    states.append(state)
                }
                result.states = states
            case "api":
                guard Route.named(UpstreamAPI(value)) != nil else {
                    return problem("api \(quoted(value)) is not an upstream API; write one of \(Route.apis.map(\.name).joined(separator: ", "))")
                }
                result.api = UpstreamAPI(value)
            case "machineActionId", "target":
                guard !value.isEmpty, value.count <= 64, value.allSatisfy({ $0.isASCII && ($0.isHexDigit || $0 == "-") }) else {
                    return problem("\(item.name) \(quoted(value)) is not a machine action id or machine id")
                }
                result.target = value
            case "since", "until":
                guard let instant = Self.instant(value, now: now) else {
                    return problem("\(item.name) \(quoted(value)) is neither an ISO 8601 time from 1678 to 2261 (2026-12-03T04:00:00Z) nor a duration ago (30m, 24h)")
                }
                if item.name == "since" { result.since = instant } else { result.until = instant }
            case "limit":
                guard let limit = Int(value), (1...RequestQuery.maxLimit).contains(limit) else {
                    return problem("limit \(quoted(value)) must be a whole number from 1 to \(RequestQuery.maxLimit)")
                }
                result.limit = limit
            case "cursor":
                guard let cursor = RequestCursor(value) else {
                    return problem("cursor \(quoted(value)) is not a cursor; pass the next of the page before, as it came")
                }
                result.after = cursor
            default:
                return problem("\(quoted(item.name)) is not a parameter of this listing; use client, uid, state, api, machineActionId, target, since, until, limit or cursor")
            }
        }
        return .success(result)
    }

    private static func instant(_ text: String, now: Timestamp) -> Timestamp? {
        if let duration = Duration(configString: text) { return now - duration }
        return JSON.timestamp(parsing: text)
    }

    private static func quoted(_ text: String) -> String {
        "\"\(text.prefix(80))\""
    }
}
