/// The forms of the ids in the local API's paths and bodies, checked byte by byte: every request
/// passes here, and Character-wise checks cost more than the rest of the validation together.
/// The daemon refuses anything else before it can become part of an upstream URL (dot segments,
/// percent escapes, slashes); the command line checks the same forms to fail before the socket.
public enum Identifier {
    /// A machine action id: a GUID in its 8-4-4-4-12 hex form.
    public static func isMachineActionID(_ text: String) -> Bool {
        let bytes = text.utf8
        guard bytes.count == 36 else { return false }
        for (index, byte) in bytes.enumerated() {
            switch index {
            case 8, 13, 18, 23: guard byte == UInt8(ascii: "-") else { return false }
            default: guard isHexDigit(byte) else { return false }
            }
        }
        return true
    }

    /// A machine id: 40 hex digits.
    public static func isMachineID(_ text: String) -> Bool { isHex(text, count: 40) }

    /// A file's SHA-1: 40 hex digits.
    public static func isSHA1(_ text: String) -> Bool { isHex(text, count: 40) }

    /// Exactly `count` hex digits.
    public static func isHex(_ text: String, count: Int) -> Bool {
        text.utf8.count == count && text.utf8.allSatisfy(isHexDigit)
    }

    public static let machineActionIDExample = "988cc94e-7a8f-4b28-ab65-54970c5d5018"
    public static let machineIDExample = "1e5bc9d7e413ddd7902c2932e418702b84d0cc07"

    private static func isHexDigit(_ byte: UInt8) -> Bool {
        switch byte {
        case UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "a")...UInt8(ascii: "f"), UInt8(ascii: "A")...UInt8(ascii: "F"): true
        default: false
        }
    }
}
