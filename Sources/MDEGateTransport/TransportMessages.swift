import HTTPTypes

/// One HTTP request as the transport sends it: a value, so it can cross tasks and be retried
/// by the caller without sharing state with a transfer in flight.
public struct TransportRequest: Sendable {
    /// An HTTP method token such as `GET`, `POST` or `DELETE`.
    public var method: String
    /// An absolute `http` or `https` URL. With a Unix socket configured, the host part only
    /// fills the `Host` header (for example `http://localhost/v1/status`).
    public var url: String
    /// Sent in this order. They may carry the bearer token, so the transport never logs them
    /// and never puts them into an error. `HTTPFields` holds only valid names, and values
    /// without CR, LF or NUL, so no value can start a header of its own.
    public var headers: HTTPFields
    public var body: [UInt8]

    public init(method: String, url: String, headers: HTTPFields = [:], body: [UInt8] = []) {
        self.method = method
        self.url = url
        self.headers = headers
        self.body = body
    }
}

/// The final response of a transfer. Interim responses (`100 Continue`) and a proxy's answer to
/// `CONNECT` are not part of it: callers forward this response as the upstream's answer.
public struct TransportResponse: Sendable {
    public var status: Int
    /// In the order received; a line whose name is not an HTTP token is left out.
    public var headers: HTTPFields
    public var body: [UInt8]

    public init(status: Int, headers: HTTPFields = [:], body: [UInt8] = []) {
        self.status = status
        self.headers = headers
        self.body = body
    }

    /// The first value of the field `name` (case-insensitive), nil if absent or not a field name.
    public func header(_ name: String) -> String? {
        HTTPField.Name(name).flatMap { headers[$0] }
    }
}
