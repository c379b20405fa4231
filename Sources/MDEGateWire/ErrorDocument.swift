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
