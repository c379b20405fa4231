import Foundation
import MDEGateCore

/// Any JSON value. The upstream's answers are kept as parsed JSON in request records, so that
/// `response.body` is an object a client can read, not a string it has to parse again.
public enum JSONValue: Sendable, Equatable, Codable {
    case null
    case bool(Bool)
    case number(Double)
    case string(String)
    case array([JSONValue])
    case object([String: JSONValue])

    public init(from decoder: any Decoder) throws {
        let container = try decoder.singleValueContainer()
        if container.decodeNil() {
            self = .null
        } else if let value = try? container.decode(Bool.self) {
            self = .bool(value)
        } else if let value = try? container.decode(Double.self) {
            self = .number(value)
        } else if let value = try? container.decode(String.self) {
            self = .string(value)
        } else if let value = try? container.decode([JSONValue].self) {
            self = .array(value)
        } else {
            self = .object(try container.decode([String: JSONValue].self))
        }
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        switch self {
        case .null: try container.encodeNil()
        case .bool(let value): try container.encode(value)
        case .number(let value):
            if value.rounded() == value, abs(value) < 1e15 {
                try container.encode(Int64(value))
            } else {
                try container.encode(value)
            }
        case .string(let value): try container.encode(value)
        case .array(let value): try container.encode(value)
        case .object(let value): try container.encode(value)
        }
    }

    /// Parses `bytes` as JSON; text that is not JSON becomes a `.string` of it, so nothing the
    /// upstream said is lost.
    public init(parsingOrQuoting bytes: [UInt8]) {
        if let value = try? JSON.decoder.decode(JSONValue.self, from: Data(bytes)) {
            self = value
        } else {
            self = .string(String(decoding: bytes, as: UTF8.self))
        }
    }

    public subscript(key: String) -> JSONValue? {
        if case .object(let object) = self { return object[key] }
        return nil
    }

    public var stringValue: String? {
        if case .string(let value) = self { return value }
        return nil
    }
}

/// The one JSON setup of the project: sorted keys (stable output for people and diffs) and
/// ISO 8601 UTC times with milliseconds.
public enum JSON {
    public static let encoder: JSONEncoder = {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return encoder
    }()

    public static let prettyEncoder: JSONEncoder = {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes, .prettyPrinted]
        return encoder
    }()

    public static let decoder = JSONDecoder()

    public static func encode(_ value: some Encodable) -> [UInt8] {
        // Encoding our own model types cannot fail: they hold no non-finite numbers.
        Array((try? encoder.encode(value)) ?? Data("null".utf8))
    }

    /// ISO 8601, UTC, milliseconds: `2026-11-24T04:03:35.123Z`, truncated to the millisecond.
    ///
    /// The whole seconds are formatted and the milliseconds written from the integer, because
    /// seconds as a `Double` can land a hair below a whole second (`…57.999Z` for a pause that
    /// ends at `…58Z`).
    public static func timestamp(_ time: Timestamp) -> String {
        let ns = time.nanosecondsSinceEpoch
        let ms = ns >= 0 ? ns / 1_000_000 : (ns - 999_999) / 1_000_000
        let seconds = ms >= 0 ? ms / 1000 : (ms - 999) / 1000
        let millis = Int(ms - seconds * 1000)
        let whole = Date(timeIntervalSince1970: Double(seconds)).formatted(Date.ISO8601FormatStyle())
        let digits = String(millis)
        return whole.dropLast() + "." + String(repeating: "0", count: 3 - digits.count) + digits + "Z"
    }

    /// An ISO 8601 instant with a zone (`2026-11-24T04:03:35Z`, `…35.123Z`, `…35+01:00`), as
    /// `timestamp` writes it and as people type it; nil for anything else, and for an instant a
    /// `Timestamp` cannot hold (nanoseconds in an Int64: 1677-09-21 to 2262-04-11), which would
    /// otherwise overflow and stop the process (`GET /v1/requests?until=0054-03-15T19:25:29Z`).
    public static func timestamp(parsing text: String) -> Timestamp? {
        let date = (try? Date(text, strategy: Date.ISO8601FormatStyle(includingFractionalSeconds: true)))
            ?? (try? Date(text, strategy: Date.ISO8601FormatStyle()))
        // To the millisecond, the most the format carries; a Double holds no more exactly.
        guard let milliseconds = date.map({ ($0.timeIntervalSince1970 * 1000).rounded() }),
            abs(milliseconds) < Double(Int64.max / 1_000_000)
        else { return nil }
        return Timestamp(nanosecondsSinceEpoch: Int64(milliseconds) * 1_000_000)
    }
}
