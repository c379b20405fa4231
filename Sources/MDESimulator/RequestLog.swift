import Dispatch
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Writes one line per request to stderr, off the event loops.
///
/// A test that starts the simulator with a pipe for stderr and never reads it would otherwise stall
/// every event loop once the pipe is full. Lines go to a serial queue; past `capacity` waiting
/// lines, new ones are dropped rather than blocking the server.
final class RequestLog: Sendable {
    private let queue = DispatchQueue(label: "mde-simulator.request-log")
    private let waiting = Mutex(0)
    private let capacity = 10_000

    func write(_ line: String) {
        let accepted = self.waiting.withLock { waiting in
            guard waiting < self.capacity else { return false }
            waiting += 1
            return true
        }
        guard accepted else { return }
        self.queue.async {
            writeAll(line + "\n", to: STDERR_FILENO)
            self.waiting.withLock { $0 -= 1 }
        }
    }
}

/// Writes the whole string with write(2): unbuffered, so a line is out before anyone waits for it,
/// and without FileHandle, which traps on EPIPE.
func writeAll(_ text: String, to descriptor: Int32) {
    var bytes = Array(text.utf8)[...]
    while !bytes.isEmpty {
        let written = bytes.withUnsafeBytes { write(descriptor, $0.baseAddress, $0.count) }
        if written < 0 && errno == EINTR { continue }
        guard written > 0 else { return }
        bytes = bytes.dropFirst(written)
    }
}
