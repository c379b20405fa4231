import Foundation
import ProcessHarness
import Synchronization

/// A datagram socket of the test's own, handed to the daemon as `NOTIFY_SOCKET`: it receives what
/// the daemon tells systemd, so the notify protocol can be tested without systemd as PID 1.
///
/// Datagrams are read on a thread of its own (a blocking read must stay off Swift's cooperative
/// pool), and a test awaits them as events, each wait bounded in time.
final class NotifySocket: Sendable {
    let path: String
    private let descriptor: Int32
    private let state = Mutex(State())

    private struct State {
        var messages: [String] = []
        var waiters: [Int: Waiter] = [:]
        var nextID = 0
        var closed = false
    }

    private struct Waiter {
        var matches: @Sendable (String) -> Bool
        var continuation: CheckedContinuation<String, any Error>
    }

    /// Binds a datagram socket at `path` (a file), or, for `@name`, in the abstract namespace
    /// (no file), and starts receiving. `path` is what `NOTIFY_SOCKET` should say.
    init(path: String) throws {
        let descriptor = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard descriptor >= 0 else { throw HarnessError("socket(AF_UNIX, SOCK_DGRAM): \(String(cString: strerror(errno)))") }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        var bytes = Array(path.utf8)
        let isAbstract = bytes.first == UInt8(ascii: "@")
        if isAbstract { bytes[0] = 0 }
        guard bytes.count < MemoryLayout.size(ofValue: address.sun_path) else {
            Glibc.close(descriptor)
            throw HarnessError("\(path) is too long for a Unix socket")
        }
        withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: bytes) }
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                // An abstract name is exactly its bytes long: no terminating NUL.
                bind(descriptor, $0, socklen_t(MemoryLayout<sa_family_t>.size + bytes.count + (isAbstract ? 0 : 1)))
            }
        }
        guard bound == 0 else {
            let reason = String(cString: strerror(errno))
            Glibc.close(descriptor)
            throw HarnessError("cannot bind the notify socket \(path): \(reason)")
        }
        self.path = path
        self.descriptor = descriptor
        Thread.detachNewThread { [self] in receive() }
    }

    /// Stops receiving (a blocked `recv` returns once the socket is shut down) and removes the file.
    func close() {
        Glibc.shutdown(descriptor, Int32(SHUT_RDWR))
        if !path.hasPrefix("@") { unlink(path) }
    }

    /// Every datagram received so far, in order.
    var messages: [String] { state.withLock { $0.messages } }

    /// Waits for a datagram (already received or still to come) with a line for which `matches`
    /// holds, and returns the whole datagram.
    @discardableResult
    func waitForMessage(
        _ what: String,
        timeout: Duration = .seconds(30),
        where matches: @escaping @Sendable (String) -> Bool
    ) async throws -> String {
        let matchesALine: @Sendable (String) -> Bool = { message in
            message.split(separator: "\n").contains { matches(String($0)) }
        }
        do {
            return try await withTimeout(timeout, "a notification with \(what)") {
                try await self.message(matching: matchesALine)
            }
        } catch {
            throw HarnessError("\(error)\nreceived so far: \(messages)")
        }
    }

    /// Waits for a datagram with the line `line` (e.g. `READY=1`).
    @discardableResult
    func waitForMessage(line: String, timeout: Duration = .seconds(30)) async throws -> String {
        try await waitForMessage(line, timeout: timeout) { $0 == line }
    }

    private func message(matching matches: @escaping @Sendable (String) -> Bool) async throws -> String {
        let id = state.withLock { state in
            state.nextID += 1
            return state.nextID
        }
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { continuation in
                let outcome = state.withLock { state -> Result<String, any Error>? in
                    if Task.isCancelled { return .failure(CancellationError()) }
                    if let message = state.messages.first(where: matches) { return .success(message) }
                    if state.closed { return .failure(HarnessError("the notify socket was closed")) }
                    state.waiters[id] = Waiter(matches: matches, continuation: continuation)
                    return nil
                }
                if let outcome { continuation.resume(with: outcome) }
            }
        } onCancel: {
            let waiter = state.withLock { $0.waiters.removeValue(forKey: id) }
            waiter?.continuation.resume(throwing: CancellationError())
        }
    }

    private func receive() {
        var buffer = [UInt8](repeating: 0, count: 64 * 1024)
        while true {
            let count = buffer.withUnsafeMutableBytes { recv(descriptor, $0.baseAddress, $0.count, 0) }
            if count < 0, errno == EINTR { continue }
            guard count > 0 else { break }
            let message = String(decoding: buffer[0..<count], as: UTF8.self)
            let ready = state.withLock { state -> [CheckedContinuation<String, any Error>] in
                state.messages.append(message)
                var ready: [CheckedContinuation<String, any Error>] = []
                for (id, waiter) in state.waiters where waiter.matches(message) {
                    state.waiters[id] = nil
                    ready.append(waiter.continuation)
                }
                return ready
            }
            for continuation in ready { continuation.resume(returning: message) }
        }
        Glibc.close(descriptor)
        let waiters = state.withLock { state in
            state.closed = true
            defer { state.waiters = [:] }
            return Array(state.waiters.values)
        }
        for waiter in waiters { waiter.continuation.resume(throwing: HarnessError("the notify socket was closed")) }
    }
}
