/// An optional whose key is always written: `null` when absent, where the synthesized `Codable`
/// would leave the key out. Clients of the local API rely on every document of a kind having the
/// same keys.
///
/// Reading accepts both `null` and a missing key, so documents written before a key existed
/// still decode.
@propertyWrapper
public struct AlwaysWritten<Value: Codable & Sendable & Equatable>: Codable, Sendable, Equatable {
    public var wrappedValue: Value?

    public init(wrappedValue: Value?) {
        self.wrappedValue = wrappedValue
    }

    public init(from decoder: any Decoder) throws {
        let container = try decoder.singleValueContainer()
        wrappedValue = container.decodeNil() ? nil : try container.decode(Value.self)
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        if let wrappedValue {
            try container.encode(wrappedValue)
        } else {
            try container.encodeNil()
        }
    }
}

extension KeyedDecodingContainer {
    /// A missing key reads as absent (the synthesized decoder would otherwise require it).
    public func decode<Value>(_ type: AlwaysWritten<Value>.Type, forKey key: Key) throws -> AlwaysWritten<Value> {
        try decodeIfPresent(type, forKey: key) ?? AlwaysWritten(wrappedValue: nil)
    }
}
