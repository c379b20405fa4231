/// One HTTP request as the transport sends it: a value, so it can cross tasks and be retried
/// by the caller without sharing state with a transfer in flight.
public struct HTTPRequest: Sendable {
    /// An HTTP method token such as `GET`, `POST` or `DELETE`.
    public var method: String
    /// An absolute `http` or `https` URL. With a Unix socket configured, the host part only
    /// fills the `Host` header (for example `http://localhost/v1/status`).
    public var url: String
    /// Sent in this order. They may carry the bearer token, so the transport never logs them
    /// and never puts them into an error.
    public var headers: [(name: String, value: String)]
    public var body: [UInt8]

    public init(method: String, url: String, headers: [(name: String, value: String)] = [], body: [UInt8] = []) {
        self.method = method
        self.url = url
        self.headers = headers
        self.body = body
    }
}

/// The final response of a transfer. Interim responses (`100 Continue`) and a proxy's answer to
/// `CONNECT` are not part of it: callers forward this response as the upstream's answer.
public struct HTTPResponse: Sendable {
    public var status: Int
    /// In the order received; names as the server spelled them (HTTP/2 sends lowercase).
    public var headers: [(name: String, value: String)]
    public var body: [UInt8]

    public init(status: Int, headers: [(name: String, value: String)] = [], body: [UInt8] = []) {
        self.status = status
        self.headers = headers
        self.body = body
    }

    /// The first value of a header; HTTP header names are case-insensitive.
    public func header(_ name: String) -> String? {
        headers.first { asciiCaseInsensitiveEquals($0.name, name) }?.value
    }
}

func asciiCaseInsensitiveEquals(_ lhs: String, _ rhs: String) -> Bool {
    let left = lhs.utf8
    let right = rhs.utf8
    guard left.count == right.count else { return false }
    return zip(left, right).allSatisfy { asciiLowercased($0) == asciiLowercased($1) }
}

private func asciiLowercased(_ byte: UInt8) -> UInt8 {
    (UInt8(ascii: "A")...UInt8(ascii: "Z")).contains(byte) ? byte + 32 : byte
}
