import Foundation
import HTTPTypes
import Logging
import MDEGateConfig
import MDEGateCore
import MDEGateWire
import NIOCore

/// A request that arrived on the Unix socket, fully read (or cut short past the body limit).
public struct LocalRequest: Sendable {
    public var method: String
    public var uri: String
    public var headers: HTTPFields
    public var body: [UInt8]
    /// The body went past `LocalAPI.maxBodyBytes`; what was read is dropped.
    public var bodyTooLarge: Bool
    public var peer: PeerCredentials
}

/// Route segments and enumerated values are ASCII words: compared byte by byte, without
/// Foundation's Unicode-aware comparison, which costs more than the rest of the validation.
func asciiCaseInsensitiveEqual(_ a: some StringProtocol, _ b: some StringProtocol) -> Bool {
    a.utf8.count == b.utf8.count && zip(a.utf8, b.utf8).allSatisfy { x, y in
        x == y || (x | 0x20 == y | 0x20 && (x | 0x20) >= UInt8(ascii: "a") && (x | 0x20) <= UInt8(ascii: "z"))
    }
}

/// The answer to a `LocalRequest`.
public struct LocalResponse: Sendable {
    public var status: Int
    public var headers: HTTPFields
    public var body: [UInt8]

    static func json(_ status: Int, _ value: some Encodable, headers: HTTPFields = [:]) -> LocalResponse {
        var all: HTTPFields = [.contentType: "application/json; charset=utf-8"]
        all.append(contentsOf: headers)
        return LocalResponse(status: status, headers: all, body: JSON.encode(value))
    }
}

/// The local HTTP API (the README's "Local API" and "The machine-action family"): routing,
/// validation, and the three ways of waiting for a call (synchronous, `Prefer: respond-async`,
/// `Prefer: wait=N`).
///
/// Validation happens here, before anything reaches the gateway: bad input never becomes a
/// request, never spends quota, and never reaches the upstream.
///
/// It runs on the gateway's event loop, isolated to the gateway, in the turn the request was
/// read: routing, validation, admission and (for a request that is already final, or a read)
/// the answer happen without a hop. What has to wait (a commit, the upstream) completes the
/// returned future in a later turn of the same loop.
public struct LocalAPI: Sendable {
    public static let maxBodyBytes = 64 * 1024
    public static let maxCommentCharacters = 1000

    let gateway: Gateway
    let logger: Logger

    public init(gateway: Gateway, logger: Logger) {
        self.gateway = gateway
        self.logger = logger
    }

    /// Answers `request`. The future completes on the gateway's loop and never fails.
    public func respond(to request: LocalRequest) -> EventLoopFuture<LocalResponse> {
        gateway.onLoop { gateway in self.route(request, gateway) }
    }

    /// `respond(to:)`, awaited: for tests and callers off the loop.
    nonisolated(nonsending) public func handle(_ request: LocalRequest) async -> LocalResponse {
        do {
            return try await respond(to: request).get()
        } catch {
            return reject(500, "InternalError", "\(error)")
        }
    }

    private func route(_ request: LocalRequest, _ gateway: isolated Gateway) -> EventLoopFuture<LocalResponse> {
        let loop = gateway.eventLoop
        let parts = request.uri.split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false)
        let path = String(parts[0])
        let segments = path.split(separator: "/", omittingEmptySubsequences: false).dropFirst()
        if segments.first.map({ asciiCaseInsensitiveEqual($0, "api") }) == true {
            switch Route.match(method: request.method, path: segments.dropFirst()) {
            case .found(let route, let target):
                return call(route, target: target, query: parts.count > 1 ? parts[1] : nil, request, gateway)
            case .wrongMethod(let allow):
                return loop.makeSucceededFuture(methodNotAllowed(allow: allow))
            case nil: break
            }
        }
        let names = segments.map(String.init)
        switch (request.method, names.count, names.first) {
        case (_, 3, "v1") where names[1] == "requests" && !names[2].isEmpty:
            switch request.method {
            case "GET": return loop.makeSucceededFuture(show(names[2], gateway))
            case "DELETE": return withdraw(names[2], gateway)
            default: return loop.makeSucceededFuture(methodNotAllowed(allow: "GET, DELETE"))
            }
        case (_, 2, "v1") where names[1] == "requests":
            guard request.method == "GET" else { return loop.makeSucceededFuture(methodNotAllowed(allow: "GET")) }
            return list(query: parts.count > 1 ? parts[1] : nil, gateway)
        case (_, 2, "v1") where names[1] == "status":
            guard request.method == "GET" else { return loop.makeSucceededFuture(methodNotAllowed(allow: "GET")) }
            guard gateway.sharedQuota != nil else { return loop.makeSucceededFuture(.json(200, gateway.status())) }
            // With a shared quota, every host's use is read from the database first.
            let promise = loop.makePromise(of: LocalResponse.self)
            promise.completeWithTask { .json(200, await gateway.statusWithSharedUsage()) }
            return promise.futureResult
        case (_, 1, "healthz"):
            guard request.method == "GET" else { return loop.makeSucceededFuture(methodNotAllowed(allow: "GET")) }
            return loop.makeSucceededFuture(.json(200, ["status": "ok"]))
        case (_, 1, "metrics"):
            guard request.method == "GET" else { return loop.makeSucceededFuture(methodNotAllowed(allow: "GET")) }
            return loop.makeSucceededFuture(Self.metrics(gateway))
        default:
            return loop.makeSucceededFuture(reject(404, "NotFound", "no such route: \(request.method) \(path)"))
        }
    }

    // MARK: Routes

    /// A call of the machine-action family: validated, then admitted; answered as the caller
    /// prefers (synchronously, `Prefer: respond-async`, or `Prefer: wait=N`).
    private func call(
        _ route: Route, target: String, query: Substring?, _ request: LocalRequest, _ gateway: isolated Gateway
    ) -> EventLoopFuture<LocalResponse> {
        let loop = gateway.eventLoop
        if request.bodyTooLarge {
            return loop.makeSucceededFuture(
                reject(413, "InvalidRequestBody", "the body is larger than \(Self.maxBodyBytes / 1024) KiB"))
        }
        let call: ActionCall
        switch route.validate(target: target, body: request.body, query: query) {
        case .success(let value): call = value
        case .failure(let problem): return loop.makeSucceededFuture(reject(400, problem.code, problem.message))
        }
        let clientName: String?
        switch parseClientName(request.headers[.mdegateClient]) {
        case .success(let value): clientName = value
        case .failure(let problem): return loop.makeSucceededFuture(reject(400, "InvalidRequestBody", problem.message))
        }
        let prefer = Preference(request.headers[.prefer])
        let client = RequestRecord.Client(uid: request.peer.uid, pid: request.peer.pid, name: clientName)
        let waiting: Gateway.Waiting = prefer.respondAsync ? .untilStored : .untilFinal(timeout: prefer.wait)
        return gateway.submit(call, client: client, waiting: waiting)
            .map { answer in self.response(to: answer) }
    }

    private func show(_ id: String, _ gateway: isolated Gateway) -> LocalResponse {
        guard let document = gateway.document(id) else {
            return reject(
                404, "NotFound",
                "no request \(id) (finished requests are kept for state.retention, \(gateway.settings.retention.configString))",
                target: id)
        }
        return .json(200, document, headers: [.mdegateRequestID: id])
    }

    /// The audit listing: read from the store beside its writer, never on the loop, so a page
    /// over 100,000 records costs the request path nothing.
    private func list(query: Substring?, _ gateway: isolated Gateway) -> EventLoopFuture<LocalResponse> {
        let loop = gateway.eventLoop
        let parsed: RequestQuery
        switch RequestQuery.parse(query, now: gateway.now()) {
        case .success(let value): parsed = value
        case .failure(let problem): return loop.makeSucceededFuture(reject(400, problem.code, problem.message))
        }
        let store = gateway.store
        let metrics = gateway.metrics
        let logger = self.logger
        let promise = loop.makePromise(of: LocalResponse.self)
        promise.completeWithTask {
            do {
                let page = try await store.requests(matching: parsed)
                let documents = page.records.map { RequestRecordDocument(record: $0, position: nil, estimatedDispatchAt: nil) }
                return .json(200, RequestListDocument(requests: documents, next: page.next?.description))
            } catch {
                metrics.storeErrors.increment()
                logger.error("could not read the audit listing", metadata: ["error": "\(error)"])
                return .json(
                    503, ErrorDocument(code: "StoreUnavailable", message: "the listing could not be read: \(error)", target: ""),
                    headers: [.retryAfter: "5"])
            }
        }
        return promise.futureResult
    }

    private func withdraw(_ id: String, _ gateway: isolated Gateway) -> EventLoopFuture<LocalResponse> {
        gateway.withdraw(id).map { withdrawal -> LocalResponse in
            switch withdrawal {
            case .withdrawn(let document): return .json(200, document, headers: [.mdegateRequestID: id])
            case .alreadySent(let document):
                return .json(
                    409,
                    ErrorDocument(
                        code: "Conflict",
                        message: "request \(id) was already sent upstream (state \(document.state.rawValue)); it can no longer be withdrawn",
                        target: id),
                    headers: [.mdegateRequestID: id])
            case .notFound:
                return self.reject(404, "NotFound", "no request \(id)", target: id)
            }
        }.recover { error in
            self.reject(
                503, "StoreUnavailable", "the withdrawal could not be stored (it is written again shortly): \(error)",
                target: id, headers: [.retryAfter: "5"])
        }
    }

    /// `GET /metrics`: Prometheus's text format (also served on `metrics.address`).
    static func metrics(_ gateway: isolated Gateway) -> LocalResponse {
        LocalResponse(
            status: 200, headers: [.contentType: GatewayMetrics.contentType], body: gateway.metricsExposition())
    }

    // MARK: Answers

    private func response(to answer: Gateway.Answer) -> LocalResponse {
        switch answer {
        case .accepted(let document):
            let id = document.id
            return .json(202, document, headers: [.location: "/v1/requests/\(id)", .mdegateRequestID: id])
        case .final(let record): return final(record)
        case .queueFull:
            return reject(
                503, "QueueFull", "the queue holds queue.max_pending requests already; try again later",
                headers: [.retryAfter: "60"])
        case .storeUnavailable(let problem):
            return reject(
                503, "StoreUnavailable", "the request could not be stored, so it was not accepted: \(problem)",
                headers: [.retryAfter: "5"])
        case .notFound:
            return reject(500, "InternalError", "the request disappeared before it was answered")
        }
    }

    /// The upstream's answer as it came; 502 when the last attempt got none.
    private func final(_ record: RequestRecord) -> LocalResponse {
        var headers: HTTPFields = [.mdegateRequestID: record.id]
        if record.joined != nil { headers[.mdegateCoalesced] = "true" }
        if let response = record.response {
            headers[.contentType] = response.contentType ?? "application/json; charset=utf-8"
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
        headers: HTTPFields = [:]
    ) -> LocalResponse {
        if target == nil { gateway.metrics.rejected(code: code) }
        let target = target ?? UUID().uuidString.lowercased()
        logger.notice(
            "request refused", metadata: ["status": "\(status)", "code": "\(code)", "target": "\(target)", "reason": "\(message)"])
        return .json(status, ErrorDocument(code: code, message: message, target: target), headers: headers)
    }

    private func methodNotAllowed(allow: String) -> LocalResponse {
        reject(405, "MethodNotAllowed", "this route accepts \(allow)", headers: [.allow: allow])
    }
}
