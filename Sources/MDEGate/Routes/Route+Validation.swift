import Foundation
import MDEGateCore
import MDEGateWire

extension Route {
    /// What a method and path under `/api/` come to.
    enum Match {
        case found(Route, target: String)
        /// The path is a route's, the method is not: 405 with these in `Allow`.
        case wrongMethod(allow: String)
    }

    /// The route for `method` and `path` (the segments after `api`), if any path matches.
    static func match(method: String, path: some Collection<Substring>) -> Match? {
        var allowed: [String] = []
        for route in all where route.matches(path) {
            guard route.method == method else {
                allowed.append(route.method)
                continue
            }
            let target = zip(route.segments, path).first { mine, _ in mine == "{id}" }.map { String($0.1) } ?? ""
            return .found(route, target: target)
        }
        return allowed.isEmpty ? nil : .wrongMethod(allow: allowed.joined(separator: ", "))
    }

    private func matches(_ path: some Collection<Substring>) -> Bool {
        let own = segments
        guard path.count == own.count else { return false }
        return zip(own, path).allSatisfy { mine, theirs in
            mine == "{id}" ? !theirs.isEmpty : asciiCaseInsensitiveEqual(mine, theirs)
        }
    }

    // MARK: Validation

    /// Checks everything about a call before it can become a request: the target's form, the
    /// body (POST) or the OData options (the listing). The problem says which rule was broken.
    func validate(target id: String, body: [UInt8], query: Substring?) -> Result<ActionCall, ValidationProblem> {
        switch target {
        case .machineAction:
            guard Identifier.isMachineActionID(id) else {
                return .failure(
                    ValidationProblem(
                        code: "InvalidMachineActionId",
                        message: "the machine action id must be a GUID such as \(Identifier.machineActionIDExample)"))
            }
        case .machine:
            guard Identifier.isMachineID(id) else {
                return .failure(
                    ValidationProblem(
                        code: "InvalidMachineId",
                        message: "the machine id must be 40 hex digits such as \(Identifier.machineIDExample)"))
            }
        case .none: break
        }
        if target == .none {
            return listingOptions(query).map { ActionCall(api: api, target: "", options: $0) }
        }
        guard method == "POST" else { return .success(ActionCall(api: api, target: id)) }
        return parseActionBody(body, parameters: parameters).map { comment, options in
            ActionCall(api: api, target: id, comment: comment, options: options)
        }
    }

    static let maxFilterCharacters = 2000
    static let maxTop = 10_000
    static let maxSkip = 1_000_000

    /// `$filter` (printable, at most 2,000 characters), `$top` (1…10,000) and `$skip`
    /// (0…1,000,000), each at most once; any other option is refused, so nothing unvalidated
    /// reaches the upstream URL. Values are percent-decoded here (`+` is a space, as
    /// form-encoding clients send it) and encoded again when the call leaves.
    private func listingOptions(_ query: Substring?) -> Result<[String: String], ValidationProblem> {
        var options: [String: String] = [:]
        guard let query, !query.isEmpty else { return .success(options) }
        for item in query.split(separator: "&", omittingEmptySubsequences: true) {
            let parts = item.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            guard let name = Self.decoded(parts[0]), let value = Self.decoded(parts.count > 1 ? parts[1] : "") else {
                return .failure(ValidationProblem(code: "InvalidQuery", message: "the query string has a malformed percent escape"))
            }
            guard Self.listingOptions.contains(name) else {
                return .failure(
                    ValidationProblem(
                        code: "InvalidQuery",
                        message: "unknown query option \"\(name.prefix(40))\"; the listing takes $filter, $top and $skip"))
            }
            guard options[name] == nil else {
                return .failure(ValidationProblem(code: "InvalidQuery", message: "\(name) is given more than once"))
            }
            switch name {
            case "$filter":
                guard value.count <= Self.maxFilterCharacters, !value.isEmpty,
                    value.unicodeScalars.allSatisfy({ $0.value >= 0x20 && $0.value != 0x7F })
                else {
                    return .failure(
                        ValidationProblem(
                            code: "InvalidQuery",
                            message: "$filter must be 1 to \(Self.maxFilterCharacters) printable characters"))
                }
            case "$top":
                guard let top = Int(value), (1...Self.maxTop).contains(top) else {
                    return .failure(ValidationProblem(code: "InvalidQuery", message: "$top must be a whole number from 1 to \(Self.maxTop)"))
                }
            default:
                guard let skip = Int(value), (0...Self.maxSkip).contains(skip) else {
                    return .failure(ValidationProblem(code: "InvalidQuery", message: "$skip must be a whole number from 0 to \(Self.maxSkip)"))
                }
            }
            options[name] = value
        }
        return .success(options)
    }

    private static func decoded(_ text: Substring) -> String? {
        text.replacingOccurrences(of: "+", with: " ").removingPercentEncoding
    }
}
