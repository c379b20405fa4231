import Foundation
import HTTPTypes

#if canImport(Glibc)
import Glibc
#endif

/// Where a benchmark connection goes: the gateway's Unix socket or the simulator on loopback.
enum Endpoint: Sendable, CustomStringConvertible {
    case unix(String)
    case loopback(port: UInt16)

    var description: String {
        switch self {
        case .unix(let path): "unix:\(path)"
        case .loopback(let port): "http://127.0.0.1:\(port)"
        }
    }
}

/// One HTTP/1.1 answer, as read off the wire.
struct HTTPReply: Sendable {
    var status: Int
    var headers: HTTPFields
    var body: [UInt8]
}

/// A blocking HTTP/1.1 keep-alive connection for one benchmark thread.
///
/// Deliberately minimal (one write, reads until `Content-Length` is satisfied): the client must
/// cost as little as possible, since it shares the machine's cores with the daemon it measures.
/// Both servers measured here (NIO-based) always send `Content-Length`. Not thread-safe: one
/// connection belongs to one thread. Every read and write is bounded by `timeoutSeconds`.
final class HTTPConnection {
    let endpoint: Endpoint
    private let descriptor: Int32
    private var buffer: [UInt8] = []
    private var chunk = [UInt8](repeating: 0, count: 65_536)
    private var closedByPeer = false

    init(_ endpoint: Endpoint, timeoutSeconds: Double) throws {
        self.endpoint = endpoint
        let domain = switch endpoint {
        case .unix: AF_UNIX
        case .loopback: AF_INET
        }
        let fd = socket(domain, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw BenchError("socket(): \(String(cString: strerror(errno)))") }
        var timeout = timeval(
            tv_sec: Int(max(timeoutSeconds, 0.001)),
            tv_usec: Int((max(timeoutSeconds, 0.001).truncatingRemainder(dividingBy: 1)) * 1e6))
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))

        let result: Int32
        switch endpoint {
        case .unix(let path):
            var address = sockaddr_un()
            address.sun_family = sa_family_t(AF_UNIX)
            let bytes = Array(path.utf8)
            guard bytes.count < MemoryLayout.size(ofValue: address.sun_path) else {
                close(fd)
                throw BenchError("the socket path \(path) is too long")
            }
            withUnsafeMutableBytes(of: &address.sun_path) { raw in
                raw.copyBytes(from: bytes)
                raw[bytes.count] = 0
            }
            result = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
                }
            }
        case .loopback(let port):
            var one: Int32 = 1
            setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
            var address = sockaddr_in()
            address.sin_family = sa_family_t(AF_INET)
            address.sin_port = port.bigEndian
            address.sin_addr.s_addr = UInt32(0x7F00_0001).bigEndian
            result = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
                }
            }
        }
        guard result == 0 else {
            let reason = String(cString: strerror(errno))
            close(fd)
            throw BenchError("cannot connect to \(endpoint): \(reason)")
        }
        descriptor = fd
    }

    deinit {
        close(descriptor)
    }

    /// Sends one request and reads its answer. `Host`, `Content-Length` are added.
    func send(
        _ method: String, _ path: String, headers: HTTPFields = [:], body: [UInt8] = []
    ) throws -> HTTPReply {
        guard !closedByPeer else { throw BenchError("\(endpoint): the server closed the connection") }
        var head = "\(method) \(path) HTTP/1.1\r\nHost: localhost\r\n"
        for field in headers { head += "\(field.name.rawName): \(field.value)\r\n" }
        if !body.isEmpty || method == "POST" { head += "Content-Length: \(body.count)\r\n" }
        head += "\r\n"
        var message = Array(head.utf8)
        message.append(contentsOf: body)
        try writeAll(message)
        return try readReply()
    }

    private func writeAll(_ bytes: [UInt8]) throws {
        var offset = 0
        while offset < bytes.count {
            let written = bytes.withUnsafeBytes { raw in
                Glibc.send(descriptor, raw.baseAddress! + offset, raw.count - offset, Int32(MSG_NOSIGNAL))
            }
            if written < 0 {
                if errno == EINTR { continue }
                throw BenchError("\(endpoint): write failed: \(String(cString: strerror(errno)))")
            }
            offset += written
        }
    }

    private func fill() throws {
        while true {
            let count = chunk.withUnsafeMutableBytes { read(descriptor, $0.baseAddress, $0.count) }
            if count > 0 {
                buffer.append(contentsOf: chunk[0..<count])
                return
            }
            if count == 0 {
                closedByPeer = true
                throw BenchError("\(endpoint): the server closed the connection before answering")
            }
            if errno == EINTR { continue }
            if errno == EAGAIN || errno == EWOULDBLOCK {
                throw BenchError("\(endpoint): no answer within the time limit")
            }
            throw BenchError("\(endpoint): read failed: \(String(cString: strerror(errno)))")
        }
    }

    private func readReply() throws -> HTTPReply {
        var scanned = 0
        var headEnd: Int?
        while headEnd == nil {
            if buffer.count >= 4 {
                var index = max(0, scanned - 3)
                while index + 3 < buffer.count {
                    if buffer[index] == 13, buffer[index + 1] == 10, buffer[index + 2] == 13, buffer[index + 3] == 10 {
                        headEnd = index + 4
                        break
                    }
                    index += 1
                }
                scanned = buffer.count
            }
            if headEnd == nil { try fill() }
        }
        guard let headEnd else { throw BenchError("unreachable") }
        // Parsed as bytes: Foundation's string splitting would cost the benchmark client more CPU
        // than the daemon it measures spends on the same answer.
        let lines = buffer[0..<(headEnd - 4)].split(separator: 10, omittingEmptySubsequences: false).map { line in
            line.last == 13 ? line.dropLast() : line
        }
        let statusParts = lines[0].split(separator: 32, maxSplits: 2)
        guard statusParts.count >= 2, let status = Int(String(decoding: statusParts[1], as: UTF8.self)) else {
            throw BenchError("\(endpoint): malformed status line '\(String(decoding: lines[0], as: UTF8.self))'")
        }
        var headers = HTTPFields()
        for line in lines.dropFirst() {
            guard let colon = line.firstIndex(of: 58), let name = HTTPField.Name(String(decoding: line[..<colon], as: UTF8.self))
            else { continue }
            // HTTPField trims the value's surrounding whitespace.
            headers.append(HTTPField(name: name, value: line[line.index(after: colon)...]))
        }
        let reply = HTTPReply(status: status, headers: headers, body: [])
        guard reply.headers[.transferEncoding] == nil else {
            throw BenchError("\(endpoint): chunked answers are not supported by the benchmark client")
        }
        let length = Int(reply.headers[.contentLength] ?? "0") ?? 0
        while buffer.count < headEnd + length { try fill() }
        var complete = reply
        complete.body = Array(buffer[headEnd..<(headEnd + length)])
        buffer.removeFirst(headEnd + length)
        if reply.headers[.connection]?.lowercased() == "close" { closedByPeer = true }
        return complete
    }
}

/// A failure of the benchmark itself (not a missed target, which is reported, never thrown).
struct BenchError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}
