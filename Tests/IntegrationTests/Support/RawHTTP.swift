import Foundation

/// Sends bytes exactly as written to a Unix socket and reads the answer, for requests a
/// well-behaved client library would never send (libcurl resolves `..` segments in paths).
///
/// The blocking socket calls run on a thread of their own, bounded by a receive timeout.
enum RawHTTP {
    struct Answer: Sendable {
        var status: Int
        var text: String
    }

    /// Sends `head` (request line and headers, without the blank line) with `Connection: close`
    /// and returns the status and the whole answer text.
    static func exchange(socketPath: String, head: String, body: String = "") async throws -> Answer {
        let request = head + "\r\nContent-Length: \(body.utf8.count)\r\nConnection: close\r\n\r\n" + body
        return try await withCheckedThrowingContinuation { continuation in
            Thread.detachNewThread {
                continuation.resume(with: Result { try blockingExchange(socketPath: socketPath, request: Array(request.utf8)) })
            }
        }
    }

    private static func blockingExchange(socketPath: String, request: [UInt8]) throws -> Answer {
        let descriptor = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        guard descriptor >= 0 else { throw HarnessError("socket(): \(String(cString: strerror(errno)))") }
        defer { close(descriptor) }
        var timeout = timeval(tv_sec: 30, tv_usec: 0)
        setsockopt(descriptor, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(descriptor, SOL_SOCKET, SO_SNDTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))

        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let path = Array(socketPath.utf8)
        guard path.count < MemoryLayout.size(ofValue: address.sun_path) else { throw HarnessError("socket path too long: \(socketPath)") }
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            raw.copyBytes(from: path)
            raw[path.count] = 0
        }
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(descriptor, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard connected == 0 else { throw HarnessError("connect(\(socketPath)): \(String(cString: strerror(errno)))") }

        var sent = 0
        while sent < request.count {
            let count = request[sent...].withUnsafeBytes { send(descriptor, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            if count < 0, errno == EINTR { continue }
            guard count > 0 else { throw HarnessError("send(): \(String(cString: strerror(errno)))") }
            sent += count
        }

        var answer: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 16 * 1024)
        // Bounded: at most 1 MiB, and each read waits at most the receive timeout.
        while answer.count < 1 << 20 {
            let count = buffer.withUnsafeMutableBytes { recv(descriptor, $0.baseAddress, $0.count, 0) }
            if count < 0, errno == EINTR { continue }
            if count < 0, errno == EAGAIN || errno == EWOULDBLOCK { throw HarnessError("no complete answer within 30 s") }
            guard count > 0 else { break }
            answer.append(contentsOf: buffer[0..<count])
        }
        let text = String(decoding: answer, as: UTF8.self)
        // "HTTP/1.1 404 Not Found"
        let statusLine = text.prefix { $0 != "\r" && $0 != "\n" }
        let parts = statusLine.split(separator: " ")
        guard parts.count >= 2, parts[0].hasPrefix("HTTP/"), let status = Int(parts[1]) else {
            throw HarnessError("not an HTTP answer: \(text.prefix(500))")
        }
        return Answer(status: status, text: text)
    }
}
