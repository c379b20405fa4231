import Foundation
import MDEGateWire

struct ValidationProblem: Error {
    var message: String
}

/// A GUID in its usual 8-4-4-4-12 hex form. Anything else (dot segments, percent escapes,
/// slashes) is refused before it can become part of an upstream URL.
/// Checked byte by byte: every request passes here, and Character-wise checks cost more than
/// the rest of the validation together.
func isGUID(_ text: String) -> Bool {
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

private func isHexDigit(_ byte: UInt8) -> Bool {
    switch byte {
    case UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "a")...UInt8(ascii: "f"), UInt8(ascii: "A")...UInt8(ascii: "F"): true
    default: false
    }
}

/// The body must be a JSON object with a string `Comment` (case-sensitive, as upstream) of at
/// most 1,000 characters. Decoded straight into a small struct (other members are ignored), and
/// the decoder's error says which rule the body broke.
func parseComment(_ body: [UInt8]) -> Result<String, ValidationProblem> {
    struct CancelBody: Decodable {
        var comment: String
        enum CodingKeys: String, CodingKey { case comment = "Comment" }
    }
    guard !body.isEmpty else {
        return .failure(ValidationProblem(message: #"the body is empty; send {"Comment": "..."}"#))
    }
    let text: String
    do {
        text = try JSON.decoder.decode(CancelBody.self, from: Data(body)).comment
    } catch DecodingError.keyNotFound {
        return .failure(ValidationProblem(message: #"the body has no "Comment" (the name is case-sensitive)"#))
    } catch DecodingError.typeMismatch(_, let context) where context.codingPath.isEmpty {
        return .failure(ValidationProblem(message: #"the body must be a JSON object such as {"Comment": "..."}"#))
    } catch DecodingError.typeMismatch, DecodingError.valueNotFound {
        return .failure(ValidationProblem(message: #""Comment" must be a string"#))
    } catch {
        return .failure(ValidationProblem(message: #"the body is not valid JSON; send {"Comment": "..."}"#))
    }
    guard text.count <= LocalAPI.maxCommentCharacters else {
        return .failure(
            ValidationProblem(
                message: "\"Comment\" has \(text.count) characters; at most \(LocalAPI.maxCommentCharacters) are allowed"))
    }
    return .success(text)
}

/// `Mdegate-Client`: a short printable name, so logs and status stay readable.
func parseClientName(_ header: String?) -> Result<String?, ValidationProblem> {
    guard let header else { return .success(nil) }
    let name = header.trimmingCharacters(in: .whitespaces)
    guard !name.isEmpty else { return .success(nil) }
    guard name.count <= 64, name.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || "-_.@:/".contains($0)) }) else {
        return .failure(
            ValidationProblem(
                message: "Mdegate-Client must be at most 64 characters of letters, digits and - _ . @ : /"))
    }
    return .success(name)
}

/// The `Prefer` header: `respond-async` and `wait=N` (RFC 7240). `respond-async` wins.
struct Preference {
    var respondAsync = false
    var wait: Duration?

    init(_ header: String?) {
        guard let header else { return }
        for item in header.utf8.split(separator: UInt8(ascii: ",")) {
            // Preference names are case-insensitive tokens; the value of wait= is a number.
            let token = item.drop { $0 == UInt8(ascii: " ") || $0 == UInt8(ascii: "\t") }
            let trimmed = token.reversed().drop { $0 == UInt8(ascii: " ") || $0 == UInt8(ascii: "\t") }.reversed()
            let lowered = String(decoding: trimmed.map { $0 | ($0 >= 0x41 && $0 <= 0x5A ? 0x20 : 0) }, as: UTF8.self)
            if lowered == "respond-async" {
                respondAsync = true
            } else if lowered.hasPrefix("wait="), let seconds = Double(lowered.dropFirst(5)), seconds >= 0, seconds.isFinite {
                wait = .milliseconds(Int64(min(seconds, 86_400) * 1000))
            }
        }
    }
}
