import Foundation
import MDEGate
import MDEGateWire

/// What every call that leaves for the upstream must look like, checked independently of how
/// the gateway built it: a route of the table, its id of the route's form, a path with nothing
/// that could end or bend a URL, and for a POST a JSON body with a string `Comment` of at most
/// 1,000 characters.
enum UpstreamCallCheck {
    static func problem(with call: UpstreamCall) -> String? {
        guard call.path.utf8.allSatisfy({ $0 > 0x20 && $0 < 0x7F }) else { return "the path has a space, control or non-ASCII byte" }
        let parts = call.path.split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false)
        let segments = parts[0].split(separator: "/", omittingEmptySubsequences: false)
        guard segments.first == "", segments.dropFirst().first == "api" else { return "the path is not under /api/" }
        let below = Array(segments.dropFirst(2))
        guard
            let route = Route.all.first(where: { route in
                let template = route.template.split(separator: "/", omittingEmptySubsequences: false)
                return route.method == call.method && template.count == below.count
                    && zip(template, below).allSatisfy { $0 == "{id}" || $0 == $1 }
            })
        else { return "no route has this method and path" }
        let target = target(of: call)
        switch route.target {
        case .machineAction: if !Identifier.isMachineActionID(target) { return "the id is not a GUID" }
        case .machine: if !Identifier.isMachineID(target) { return "the id is not 40 hex digits" }
        case .none: break
        }
        if parts.count > 1 {
            guard route.target == .none else { return "a query on a route that takes none" }
            for item in parts[1].split(separator: "&", omittingEmptySubsequences: false) {
                let name = item.split(separator: "=", maxSplits: 1).first.map(String.init) ?? ""
                guard ["$filter", "$top", "$skip"].contains(name) else { return "query option \(name) is not passed through" }
            }
        }
        guard call.method == "POST" else {
            return call.body.isEmpty ? nil : "a \(call.method) with a body"
        }
        guard let object = try? JSONSerialization.jsonObject(with: Data(call.body)) as? [String: Any],
            let comment = object["Comment"] as? String
        else { return "the body is not a JSON object with a string Comment" }
        if comment.count > 1000 { return "the Comment has \(comment.count) characters" }
        for parameter in route.parameters where !(object[parameter.name] is String) {
            return "the body has no string \(parameter.name)"
        }
        return nil
    }

    /// The `{id}` of the call's path; empty for the listing.
    static func target(of call: UpstreamCall) -> String {
        let segments = call.path.split(separator: "?")[0].split(separator: "/")
        return segments.count > 2 ? String(segments[2]) : ""
    }
}
