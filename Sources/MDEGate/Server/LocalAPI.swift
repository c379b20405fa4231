import Foundation
import Logging
import MDEGateCore

/// A request that arrived on the Unix socket, fully read (or cut short past the body limit).
public struct LocalRequest: Sendable {
    public var method: String
    public var uri: String
    public var headers: [(name: String, value: String)]
    public var body: [UInt8]
    /// The body went past `LocalAPI.maxBodyBytes`; what was read is dropped.
    public var bodyTooLarge: Bool
    public var peer: PeerCredentials

    public func header(_ name: String) -> String? {
        headers.first { asciiCaseInsensitiveEqual($0.name, name) }?.value
    }
}

/// Header names are ASCII tokens (RFC 9110): compared byte by byte, without Foundation's
/// Unicode-aware comparison, which cost more than the rest of the header handling.
func asciiCaseInsensitiveEqual(_ a: String, _ b: String) -> Bool {
    a.utf8.count == b.utf8.count && zip(a.utf8, b.utf8).allSatisfy { x, y in
        x == y || (x | 0x20 == y | 0x20 && (x | 0x20) >= UInt8(ascii: "a") && (x | 0x20) <= UInt8(ascii: "z"))
    }
}

/// The answer to a `LocalRequest`.
public struct LocalResponse: Sendable {
    public var status: Int
    public var headers: [(name: String, value: String)]
    public var body: [UInt8]

    static func json(_ status: Int, _ value: some Encodable, headers: [(name: String, value: String)] = []) -> LocalResponse {
        LocalResponse(status: status, headers: [("Content-Type", "application/json; charset=utf-8")] + headers, body: JSON.encode(value))
    }
}

/// The error shape of the upstream (`{"error":{"code","message","target"}}`), used for mdegate's
/// own errors too, so a tool handles both alike.
public struct ErrorDocument: Codable, Sendable {
    public struct Body: Codable, Sendable {
        public var code: String
        public var message: String
        public var target: String
    }
    public var error: Body

    public init(code: String, message: String, target: String) {
        error = Body(code: code, message: message, target: target)
    }
}

/// The local HTTP API (DESIGN.md, "Local API"): routing, validation, and the three ways of
/// waiting for a cancel (synchronous, `Prefer: respond-async`, `Prefer: wait=N`).
///
/// Validation happens here, before anything reaches the gateway: bad input never becomes a
/// request, never spends quota, and never reaches the upstream.
public struct LocalAPI: Sendable {
    public static let maxBodyBytes = 64 * 1024
    public static let maxCommentCharacters = 1000

    let gateway: Gateway
    let logger: Logger

    public init(gateway: Gateway, logger: Logger) {
        self.gateway = gateway
        self.logger = logger
    }

    public func handle(_ request: LocalRequest) async -> LocalResponse {
        let path = request.uri.split(separator: "?", maxSplits: 1).first.map(String.init) ?? request.uri
        let segments = path.split(separator: "/", omittingEmptySubsequences: false).dropFirst().map(String.init)
        switch (request.method, segments.count, segments.first) {
        case (_, 4, "api") where segments[1] == "machineactions" && segments[3] == "cancel":
            guard request.method == "POST" else { return methodNotAllowed(allow: "POST") }
            return await cancel(machineActionID: segments[2], request)
        case (_, 3, "v1") where segments[1] == "requests" && !segments[2].isEmpty:
            switch request.method {
            case "GET": return await show(segments[2])
            case "DELETE": return await withdraw(segments[2])
            default: return methodNotAllowed(allow: "GET, DELETE")
            }
        case (_, 2, "v1") where segments[1] == "status":
            guard request.method == "GET" else { return methodNotAllowed(allow: "GET") }
            return .json(200, await gateway.status())
        case (_, 1, "healthz"):
            guard request.method == "GET" else { return methodNotAllowed(allow: "GET") }
            return .json(200, ["status": "ok"])
        default:
            return reject(404, "NotFound", "no such route: \(request.method) \(path)")
        }
    }

    // MARK: Routes

    private func cancel(machineActionID: String, _ request: LocalRequest) async -> LocalResponse {
        if request.bodyTooLarge {
            return reject(413, "InvalidRequestBody", "the body is larger than \(Self.maxBodyBytes / 1024) KiB")
        }
        guard isGUID(machineActionID) else {
            return reject(
                400, "InvalidMachineActionId",
                "the machine action id must be a GUID such as 988cc94e-7a8f-4b28-ab65-54970c5d5018")
        }
        let comment: String
        switch parseComment(request.body) {
        case .success(let value): comment = value
        case .failure(let problem): return reject(400, "InvalidRequestBody", problem.message)
        }
        let clientName: String?
        switch parseClientName(request.header("Mdegate-Client")) {
        case .success(let value): clientName = value
        case .failure(let problem): return reject(400, "InvalidRequestBody", problem.message)
        }
        let prefer = Preference(request.header("Prefer"))
        let client = RequestRecord.Client(uid: request.peer.uid, pid: request.peer.pid, name: clientName)

        let record: RequestRecord
        do {
            switch try await gateway.submit(machineActionID: machineActionID, comment: comment, client: client) {
            case .accepted(let accepted): record = accepted
            case .queueFull:
                return reject(
                    503, "QueueFull", "the queue holds queue.max_pending requests already; try again later",
                    headers: [("Retry-After", "60")])
            }
        } catch {
            return reject(
                503, "StoreUnavailable", "the request could not be stored: \(error)", headers: [("Retry-After", "5")])
        }

        if prefer.respondAsync {
            return await accepted(record.id)
        }
        guard let final = await gateway.awaitFinal(record.id, timeout: prefer.wait), final.state.isFinal else {
            return await accepted(record.id)
        }
        return answer(final)
    }

    private func show(_ id: String) async -> LocalResponse {
        guard let document = await gateway.document(id) else {
            return reject(404, "NotFound", "no request \(id) (finished requests are kept 24 hours)", target: id)
        }
        return .json(200, document, headers: [("Mdegate-Request-Id", id)])
    }

    private func withdraw(_ id: String) async -> LocalResponse {
        do {
            switch try await gateway.withdraw(id) {
            case .withdrawn(let document): return .json(200, document, headers: [("Mdegate-Request-Id", id)])
            case .alreadySent(let document):
                return .json(
                    409,
                    ErrorDocument(
                        code: "Conflict",
                        message: "request \(id) was already sent upstream (state \(document.record.state.rawValue)); it can no longer be withdrawn",
                        target: id),
                    headers: [("Mdegate-Request-Id", id)])
            case .notFound:
                return reject(404, "NotFound", "no request \(id)", target: id)
            }
        } catch {
            return reject(503, "Unavailable", "the withdrawal could not be stored: \(error)", target: id)
        }
    }

    // MARK: Answers

    /// 202 with the record and where to poll it.
    private func accepted(_ id: RequestID) async -> LocalResponse {
        let document = await gateway.document(id)
        return .json(202, document, headers: [("Location", "/v1/requests/\(id)"), ("Mdegate-Request-Id", id)])
    }

    /// The upstream's answer as it came; 502 when the last attempt got none.
    private func answer(_ record: RequestRecord) -> LocalResponse {
        var headers: [(name: String, value: String)] = [("Mdegate-Request-Id", record.id)]
        if record.joined != nil { headers.append(("Mdegate-Coalesced", "true")) }
        if let response = record.response {
            headers.append(("Content-Type", response.contentType ?? "application/json; charset=utf-8"))
            return LocalResponse(status: response.status, headers: headers, body: response.body)
        }
        if record.state == .withdrawn {
            return .json(
                409, ErrorDocument(code: "Conflict", message: "request \(record.id) was withdrawn", target: record.id),
                headers: headers)
        }
        return .json(
            502,
            ErrorDocument(
                code: "UpstreamUnavailable",
                message: "the upstream gave no answer after \(record.attempts) attempt(s): \(record.lastError ?? "unknown error")",
                target: record.id),
            headers: headers)
    }

    /// An error for input that never became a request: it gets a fresh id as `target`, which
    /// the log line carries too, so an operator can find it from what the tool printed.
    private func reject(
        _ status: Int, _ code: String, _ message: String, target: String? = nil,
        headers: [(name: String, value: String)] = []
    ) -> LocalResponse {
        let target = target ?? UUID().uuidString.lowercased()
        logger.notice(
            "request refused", metadata: ["status": "\(status)", "code": "\(code)", "target": "\(target)", "reason": "\(message)"])
        return .json(status, ErrorDocument(code: code, message: message, target: target), headers: headers)
    }

    private func methodNotAllowed(allow: String) -> LocalResponse {
        reject(405, "MethodNotAllowed", "this route accepts \(allow)", headers: [("Allow", allow)])
    }
}

// MARK: Validation

struct ValidationProblem: Error {
    var message: String
}

/// A GUID in its usual 8-4-4-4-12 hex form. Anything else (dot segments, percent escapes,
/// slashes) is refused before it can become part of an upstream URL.
func isGUID(_ text: String) -> Bool {
    let groups = text.split(separator: "-", omittingEmptySubsequences: false)
    guard groups.map(\.count) == [8, 4, 4, 4, 12] else { return false }
    return groups.allSatisfy { $0.allSatisfy(\.isHexDigit) && $0.allSatisfy(\.isASCII) }
}

/// The body must be a JSON object with a string `Comment` (case-sensitive, as upstream) of at
/// most 1,000 characters.
func parseComment(_ body: [UInt8]) -> Result<String, ValidationProblem> {
    guard !body.isEmpty else {
        return .failure(ValidationProblem(message: #"the body is empty; send {"Comment": "..."}"#))
    }
    guard let value = try? JSON.decoder.decode(JSONValue.self, from: Data(body)) else {
        return .failure(ValidationProblem(message: #"the body is not valid JSON; send {"Comment": "..."}"#))
    }
    guard case .object(let object) = value else {
        return .failure(ValidationProblem(message: #"the body must be a JSON object such as {"Comment": "..."}"#))
    }
    guard let comment = object["Comment"] else {
        return .failure(ValidationProblem(message: #"the body has no "Comment" (the name is case-sensitive)"#))
    }
    guard case .string(let text) = comment else {
        return .failure(ValidationProblem(message: #""Comment" must be a string"#))
    }
    guard text.count <= LocalAPI.maxCommentCharacters else {
        return .failure(
            ValidationProblem(
                message: "\"Comment\" has \(text.count) characters; at most \(LocalAPI.maxCommentCharacters) are allowed"))
    }
    return .success(text)
}

/// `Mdegate-Client`: a short printable name, so logs and status stay readable.
func parseClientName(_ header: String?) -> Result<String?, ValidationProblem> {
    guard let header else { return .success(nil) }
    let name = header.trimmingCharacters(in: .whitespaces)
    guard !name.isEmpty else { return .success(nil) }
    guard name.count <= 64, name.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || "-_.@:/".contains($0)) }) else {
        return .failure(
            ValidationProblem(
                message: "Mdegate-Client must be at most 64 characters of letters, digits and - _ . @ : /"))
    }
    return .success(name)
}

/// The `Prefer` header: `respond-async` and `wait=N` (RFC 7240). `respond-async` wins.
struct Preference {
    var respondAsync = false
    var wait: Duration?

    init(_ header: String?) {
        guard let header else { return }
        for item in header.split(separator: ",") {
            let token = item.trimmingCharacters(in: .whitespaces).lowercased()
            if token == "respond-async" {
                respondAsync = true
            } else if token.hasPrefix("wait="), let seconds = Double(token.dropFirst(5)), seconds >= 0, seconds.isFinite {
                wait = .milliseconds(Int64(min(seconds, 86_400) * 1000))
            }
        }
    }
}
