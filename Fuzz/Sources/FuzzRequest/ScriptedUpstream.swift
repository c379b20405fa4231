import Foundation
import MDEGate
import MDEGateCore
import MDEGateTransport
import Synchronization

/// The upstream of the fuzzed gateway: it records every call and answers at once, from a
/// script keyed by the call's target id, so that mutating an id reaches the gateway's failure
/// paths too:
/// an id ending in `0` gets 404, in `5` a 500 (retried), in `e` no answer (retried, then 502);
/// every other id gets the route's success status with a small MachineAction.
final class ScriptedUpstream: Upstream {
    let baseURL = "scripted://upstream"
    private let calls = Mutex<[UpstreamCall]>([])

    var arrivals: [UpstreamCall] { calls.withLock { $0 } }

    func send(_ call: UpstreamCall, token: String, completion: @escaping @Sendable (Result<TransportResponse, TransportError>) -> Void) {
        calls.withLock { $0.append(call) }
        completion(Self.answer(to: call))
    }

    static func answer(to call: UpstreamCall) -> Result<TransportResponse, TransportError> {
        let segments = call.path.split(separator: "?")[0].split(separator: "/")
        let id = segments.count > 2 ? segments[2] : ""
        switch id.last ?? " " {
        case "0":
            let body = #"{"error":{"code":"ResourceNotFound","message":"not found","target":"00000000-0000-0000-0000-000000000000"}}"#
            return .success(json(404, body))
        case "5":
            return .success(json(500, #"{"error":{"code":"InternalError"}}"#))
        case "e", "E":
            return .failure(TransportError(kind: .connectionFailed, message: "scripted: connection refused"))
        default:
            let status = segments.count > 1 && segments[1] == "machines" ? 201 : 200
            let body = #"{"id":"988cc94e-7a8f-4b28-ab65-54970c5d5018","status":"Cancelled"}"#
            return .success(json(status, body))
        }
    }

    private static func json(_ status: Int, _ body: String) -> TransportResponse {
        TransportResponse(status: status, headers: [.contentType: "application/json; charset=utf-8"], body: Array(body.utf8))
    }
}

/// The token source of the fuzzed gateway: always the same token.
final class FixedToken: TokenSource {
    let mode = "token_file"
    func token(at now: Timestamp) -> Result<String, TokenError> { .success("fuzz-token") }
    func rejected(_ token: String) {}
    var tokenExpiresAt: Timestamp? { nil }
    var lastError: String? { nil }
    func onChange(_ handler: @escaping @Sendable () -> Void) {}
}
