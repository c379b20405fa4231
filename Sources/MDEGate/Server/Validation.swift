import Foundation
import MDEGateWire

/// Why input was refused: the error code clients see (400 unless said otherwise) and what to do.
struct ValidationProblem: Error {
    var code = "InvalidRequestBody"
    var message: String
}

/// The body must be a JSON object with a string `Comment` (case-sensitive, as upstream) of at
/// most 1,000 characters, plus the route's `parameters`, each a string from its allowed values
/// (compared case-insensitively, kept in Microsoft's spelling) or, for `Sha1`, 40 hex digits.
/// Decoded straight into a small struct (other members are ignored, and never forwarded), and
/// the decoder's error says which rule the body broke.
func parseActionBody(
    _ body: [UInt8], parameters: [Route.Parameter] = []
) -> Result<(comment: String, options: [String: String]), ValidationProblem> {
    struct ActionBody: Decodable {
        var comment: String
        var isolationType: String?
        var scanType: String?
        var sha1: String?
        enum CodingKeys: String, CodingKey {
            case comment = "Comment", isolationType = "IsolationType", scanType = "ScanType", sha1 = "Sha1"
        }

        subscript(name: String) -> String? {
            switch name {
            case "IsolationType": isolationType
            case "ScanType": scanType
            case "Sha1": sha1
            default: nil
            }
        }
    }
    var example: String { #"{"Comment": "..."# + parameters.map { #"", ""# + $0.name + #"": "..."# }.joined() + #""}"# }
    guard !body.isEmpty else {
        return .failure(ValidationProblem(message: "the body is empty; send \(example)"))
    }
    let decoded: ActionBody
    do {
        decoded = try JSON.decoder.decode(ActionBody.self, from: Data(body))
    } catch DecodingError.keyNotFound {
        return .failure(ValidationProblem(message: #"the body has no "Comment" (the name is case-sensitive)"#))
    } catch DecodingError.typeMismatch(_, let context) where context.codingPath.isEmpty {
        return .failure(ValidationProblem(message: "the body must be a JSON object such as \(example)"))
    } catch DecodingError.typeMismatch(_, let context), DecodingError.valueNotFound(_, let context) {
        let name = context.codingPath.first?.stringValue ?? "Comment"
        return .failure(ValidationProblem(message: "\"\(name)\" must be a string"))
    } catch {
        return .failure(ValidationProblem(message: "the body is not valid JSON; send \(example)"))
    }
    guard decoded.comment.count <= LocalAPI.maxCommentCharacters else {
        return .failure(
            ValidationProblem(
                message: "\"Comment\" has \(decoded.comment.count) characters; at most \(LocalAPI.maxCommentCharacters) are allowed"))
    }
    var options: [String: String] = [:]
    for parameter in parameters {
        let rule = parameter.allowed.map { "one of " + $0.joined(separator: ", ") } ?? "40 hex digits (a SHA-1)"
        guard let value = decoded[parameter.name] else {
            return .failure(
                ValidationProblem(message: "the body has no \"\(parameter.name)\" (\(rule); the name is case-sensitive)"))
        }
        if let allowed = parameter.allowed {
            guard let canonical = allowed.first(where: { asciiCaseInsensitiveEqual($0, value) }) else {
                return .failure(ValidationProblem(message: "\"\(parameter.name)\" must be \(rule)"))
            }
            options[parameter.name] = canonical
        } else {
            guard Identifier.isSHA1(value) else {
                return .failure(ValidationProblem(message: "\"\(parameter.name)\" must be \(rule)"))
            }
            options[parameter.name] = value
        }
    }
    return .success((decoded.comment, options))
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
