/// The forms of the ids the command line checks before it calls the gateway, so that a typo fails
/// at once with a message that says what was expected. The daemon checks every call again: these
/// checks only save a round trip, they protect nothing.
public enum Identifier {
    /// A machine action id: a GUID in its 8-4-4-4-12 hex form.
    public static func isMachineActionID(_ text: String) -> Bool {
        let bytes = Array(text.utf8)
        guard bytes.count == 36 else { return false }
        return bytes.indices.allSatisfy { index in
            [8, 13, 18, 23].contains(index) ? bytes[index] == UInt8(ascii: "-") : isHexDigit(bytes[index])
        }
    }

    /// A machine id: 40 hex digits.
    public static func isMachineID(_ text: String) -> Bool { isHex(text, count: 40) }

    /// A file's SHA-1: 40 hex digits.
    public static func isSHA1(_ text: String) -> Bool { isHex(text, count: 40) }

    public static let machineActionIDExample = "988cc94e-7a8f-4b28-ab65-54970c5d5018"
    public static let machineIDExample = "1e5bc9d7e413ddd7902c2932e418702b84d0cc07"

    private static func isHex(_ text: String, count: Int) -> Bool {
        text.utf8.count == count && text.utf8.allSatisfy(isHexDigit)
    }

    private static func isHexDigit(_ byte: UInt8) -> Bool {
        switch byte {
        case UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "a")...UInt8(ascii: "f"), UInt8(ascii: "A")...UInt8(ascii: "F"): true
        default: false
        }
    }
}
