import Foundation
import MDEGateCore
import MDEGateTransport

/// Sends one cancel to the MDE API. It knows the URL shape, the headers and the body; it does
/// not decide whether or when to send (the scheduler does) nor what to do with the answer.
public struct UpstreamClient: Sendable {
    public let transport: CurlTransport
    public let baseURL: String

    public init(transport: CurlTransport, baseURL: String) {
        self.transport = transport
        self.baseURL = baseURL.hasSuffix("/") ? String(baseURL.dropLast()) : baseURL
    }

    /// `machineActionID` must already be validated as a GUID: it becomes part of the URL.
    public func cancel(
        machineActionID: String,
        comment: String,
        token: String
    ) async -> Result<HTTPResponse, TransportError> {
        let body = JSON.encode(["Comment": comment])
        let request = HTTPRequest(
            method: "POST",
            url: "\(baseURL)/api/machineactions/\(machineActionID)/cancel",
            headers: [
                ("Authorization", "Bearer \(token)"),
                ("Content-Type", "application/json"),
                ("Accept", "application/json"),
                ("User-Agent", "mdegate"),
            ],
            body: body)
        do {
            return .success(try await transport.send(request))
        } catch {
            return .failure(error)
        }
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
