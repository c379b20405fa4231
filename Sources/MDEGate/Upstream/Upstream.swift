import Foundation
import MDEGateCore
import MDEGateTransport
import MDEGateWire

/// One upstream call, as the gateway asks for it: what goes on the wire below the base URL.
/// Built only from validated input (ids are checked before they become part of a path).
public struct UpstreamCall: Sendable, Equatable {
    public var method: String
    /// Below the base URL, starting with `/`.
    public var path: String
    public var body: [UInt8]

    /// `POST /api/machineactions/{id}/cancel` with `{"Comment": ...}`. `machineActionID` must
    /// already be validated as a GUID: it becomes part of the URL.
    public static func cancel(machineActionID: String, comment: String) -> UpstreamCall {
        UpstreamCall(
            method: "POST", path: "/api/machineactions/\(machineActionID)/cancel",
            body: JSON.encode(["Comment": comment]))
    }
}

/// Where the gateway's attempts go. The daemon's is `CurlUpstream` (libcurl, the MDE API or the
/// simulator); tests give the gateway a scripted one, so that dispatch, failures and reentrancy
/// are tested in process, with no socket and no clock of their own.
///
/// The gateway decides whether and when to send (the scheduler) and what the answer means; an
/// upstream only carries one call and hands back what came of it.
public protocol Upstream: Sendable {
    /// The API root, for status and logs.
    var baseURL: String { get }
    /// Sends `call` once with `token`, and calls `completion` exactly once with the answer or
    /// why there is none, on any thread.
    func send(_ call: UpstreamCall, token: String, completion: @escaping @Sendable (Result<TransportResponse, TransportError>) -> Void)
}

/// The MDE API (or the simulator) through libcurl: the URL shape and the headers; the transport
/// does the rest.
public struct CurlUpstream: Upstream {
    public let transport: CurlTransport
    public let baseURL: String

    public init(transport: CurlTransport, baseURL: String) {
        self.transport = transport
        self.baseURL = baseURL.hasSuffix("/") ? String(baseURL.dropLast()) : baseURL
    }

    public func send(_ call: UpstreamCall, token: String, completion: @escaping @Sendable (Result<TransportResponse, TransportError>) -> Void) {
        let request = TransportRequest(
            method: call.method,
            url: baseURL + call.path,
            headers: [
                .authorization: "Bearer \(token)", .contentType: "application/json", .accept: "application/json",
                .userAgent: "mdegate",
            ],
            body: call.body)
        transport.send(request, completion: completion)
    }
}

/// Reads `Retry-After` in both forms HTTP allows: delay-seconds (`120`) and an HTTP-date
/// (`Wed, 21 Oct 2015 07:28:00 GMT`), relative to `now`. Nil when absent or unreadable.
public func retryAfter(_ value: String?, now: Date = Date()) -> Duration? {
    guard let value = value?.trimmingCharacters(in: .whitespaces), !value.isEmpty else { return nil }
    if let seconds = Int(value), seconds >= 0 {
        return .seconds(seconds)
    }
    let formatter = DateFormatter()
    formatter.locale = Locale(identifier: "en_US_POSIX")
    formatter.timeZone = TimeZone(identifier: "GMT")
    formatter.dateFormat = "EEE, dd MMM yyyy HH:mm:ss zzz"
    guard let date = formatter.date(from: value) else { return nil }
    let delay = max(0, date.timeIntervalSince(now))
    return .milliseconds(Int64((delay * 1000).rounded(.up)))
}
