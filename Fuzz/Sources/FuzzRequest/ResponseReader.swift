/// Reads the bytes a connection wrote as HTTP/1.1 responses, strictly: a status line, header
/// lines without stray CR or LF, `Content-Length` on every response (the local API always
/// frames its answers with it), and nothing left over. What a client would misread is an error.
enum ResponseReader {
    struct Response {
        var status: Int
        var headers: [(name: String, value: String)]
        var body: [UInt8]

        func header(_ name: String) -> String? {
            headers.first { $0.name.lowercased() == name.lowercased() }?.value
        }
    }

    struct Malformed: Error, CustomStringConvertible {
        var description: String
    }

    /// `requestMethods`: the methods of the requests answered, in order (a response to HEAD has
    /// no body whatever its Content-Length says).
    static func read(_ bytes: [UInt8], requestMethods: [String]) throws -> [Response] {
        var responses: [Response] = []
        var offset = 0
        while offset < bytes.count {
            guard let headEnd = find([13, 10, 13, 10], in: bytes, from: offset) else {
                throw Malformed(description: "response \(responses.count + 1) has no end of head")
            }
            let lines = split(Array(bytes[offset..<headEnd]))
            guard let statusLine = lines.first else { throw Malformed(description: "empty head") }
            let status = try parseStatusLine(statusLine)
            var headers: [(name: String, value: String)] = []
            for line in lines.dropFirst() {
                guard let colon = line.firstIndex(of: UInt8(ascii: ":")), colon > 0 else {
                    throw Malformed(description: "header line without a name: \(String(decoding: line, as: UTF8.self))")
                }
                let name = line[..<colon]
                guard name.allSatisfy(isTokenByte) else {
                    throw Malformed(description: "header name is not a token: \(String(decoding: name, as: UTF8.self))")
                }
                let value = line[(colon + 1)...]
                guard !value.contains(where: { $0 == 13 || $0 == 10 || $0 == 0 }) else {
                    throw Malformed(description: "header value with CR, LF or NUL")
                }
                headers.append((String(decoding: name, as: UTF8.self), String(decoding: value, as: UTF8.self).trimmingSpaces))
            }
            let lengths = headers.filter { $0.name.lowercased() == "content-length" }
            guard lengths.count == 1, let length = Int(lengths[0].value), length >= 0 else {
                throw Malformed(description: "status \(status) without exactly one valid Content-Length")
            }
            if headers.contains(where: { $0.name.lowercased() == "transfer-encoding" }) {
                throw Malformed(description: "status \(status) with Transfer-Encoding and Content-Length")
            }
            offset = headEnd + 4
            let isHead = responses.count < requestMethods.count && requestMethods[responses.count] == "HEAD"
            let bodyLength = isHead || status == 204 || status == 304 ? 0 : length
            guard bytes.count - offset >= bodyLength else {
                throw Malformed(description: "status \(status) announces \(length) body bytes, \(bytes.count - offset) follow")
            }
            responses.append(Response(status: status, headers: headers, body: Array(bytes[offset..<offset + bodyLength])))
            offset += bodyLength
        }
        return responses
    }

    private static func parseStatusLine(_ line: [UInt8]) throws -> Int {
        let text = String(decoding: line, as: UTF8.self)
        let parts = text.split(separator: " ", maxSplits: 2, omittingEmptySubsequences: false)
        guard parts.count >= 2, parts[0] == "HTTP/1.1" || parts[0] == "HTTP/1.0", parts[1].count == 3,
            let status = Int(parts[1])
        else { throw Malformed(description: "bad status line: \(text)") }
        return status
    }

    /// The head's lines; a lone CR or LF inside one is an error.
    private static func split(_ head: [UInt8]) -> [[UInt8]] {
        var lines: [[UInt8]] = []
        var start = 0
        var index = 0
        while index < head.count {
            if head[index] == 13, index + 1 < head.count, head[index + 1] == 10 {
                lines.append(Array(head[start..<index]))
                index += 2
                start = index
            } else {
                index += 1
            }
        }
        lines.append(Array(head[start..<head.count]))
        return lines
    }

    private static func find(_ needle: [UInt8], in bytes: [UInt8], from start: Int) -> Int? {
        guard bytes.count >= needle.count else { return nil }
        var index = start
        while index + needle.count <= bytes.count {
            if bytes[index] == needle[0], Array(bytes[index..<index + needle.count]) == needle { return index }
            index += 1
        }
        return nil
    }

    private static func isTokenByte(_ byte: UInt8) -> Bool {
        switch byte {
        case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "0")...UInt8(ascii: "9"):
            true
        default:
            Array("!#$%&'*+-.^_`|~".utf8).contains(byte)
        }
    }
}

extension String {
    fileprivate var trimmingSpaces: String {
        String(self.drop { $0 == " " || $0 == "\t" }.reversed().drop { $0 == " " || $0 == "\t" }.reversed())
    }
}
