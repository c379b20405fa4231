import Foundation
import NIOCore
import NIOHTTP1

/// One complete HTTP answer: the simulator decides it, the channel handler writes it.
struct Reply: Sendable {
    var status: HTTPResponseStatus
    var headers: HTTPHeaders = [:]
    var body = ByteBuffer()

    /// A JSON answer with the content type the MDE API uses.
    static func json(_ status: HTTPResponseStatus, _ value: some Encodable, headers: HTTPHeaders = [:]) -> Reply {
        var headers = headers
        headers.replaceOrAdd(name: "Content-Type", value: "application/json; charset=utf-8")
        return Reply(status: status, headers: headers, body: ByteBuffer(bytes: JSON.encode(value)))
    }

    /// An error in the upstream's shape, `{"error":{"code","message","target"}}`; `target` is a
    /// fresh GUID, as the upstream puts a correlation id there.
    static func upstreamError(
        _ status: HTTPResponseStatus, code: String, message: String, headers: HTTPHeaders = [:]
    ) -> Reply {
        .json(status, UpstreamError(error: .init(code: code, message: message, target: GUID.make())), headers: headers)
    }
}

/// The MDE API's error body.
struct UpstreamError: Encodable, Sendable {
    struct Detail: Encodable, Sendable {
        var code: String
        var message: String
        var target: String
    }

    var error: Detail
}

/// The one JSON coder setup of the simulator.
enum JSON {
    /// Keys are sorted: Foundation on Linux would otherwise order them differently on every run.
    static func encode(_ value: some Encodable) -> Data {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        // Every type encoded here is plain data; failing would be a programming error.
        return try! encoder.encode(value)
    }

    /// Decodes a request body; the error says what is wrong in words a client developer can act on.
    static func decode<Value: Decodable>(_ type: Value.Type, from body: ByteBuffer?) throws(BodyError) -> Value {
        guard let body, body.readableBytes > 0 else { throw BodyError("The request body is empty; a JSON object is expected.") }
        do {
            return try JSONDecoder().decode(type, from: Data(body.readableBytesView))
        } catch DecodingError.keyNotFound(let key, _) {
            throw BodyError("The request body lacks the property '\(key.stringValue)' (names are case-sensitive).")
        } catch DecodingError.typeMismatch(_, let context), DecodingError.valueNotFound(_, let context) {
            let path = context.codingPath.map(\.stringValue).joined(separator: ".")
            throw BodyError(path.isEmpty ? "The request body must be a JSON object." : "The property '\(path)' has the wrong type.")
        } catch {
            throw BodyError("The request body is not valid JSON.")
        }
    }

    /// The top-level property names of a JSON object body, to refuse unknown ones (a typo must not
    /// pass silently).
    static func objectKeys(of body: ByteBuffer?) -> Set<String> {
        guard let body,
            let object = try? JSONSerialization.jsonObject(with: Data(body.readableBytesView)) as? [String: Any]
        else { return [] }
        return Set(object.keys)
    }
}

struct BodyError: Error, Sendable {
    var message: String

    init(_ message: String) {
        self.message = message
    }
}

/// HTTP dates (RFC 9110 §5.6.7), for a `Retry-After` given as a date rather than in seconds.
enum HTTPDate {
    private static let weekdays = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"]
    private static let months = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]

    /// The IMF-fixdate form, `Sun, 06 Nov 1994 08:49:37 GMT`: English names and GMT whatever the
    /// process's locale, which is why it is not built with a date formatter.
    static func imfFixdate(secondsSinceEpoch: Int64) -> String {
        var seconds = time_t(secondsSinceEpoch)
        var parts = tm()
        gmtime_r(&seconds, &parts)
        func two(_ value: Int32) -> String { value < 10 ? "0\(value)" : "\(value)" }
        return "\(Self.weekdays[Int(parts.tm_wday)]), \(two(parts.tm_mday)) \(Self.months[Int(parts.tm_mon)]) "
            + "\(parts.tm_year + 1900) \(two(parts.tm_hour)):\(two(parts.tm_min)):\(two(parts.tm_sec)) GMT"
    }
}
