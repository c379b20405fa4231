import Foundation
import Glibc
import Synchronization

/// Holds `<state.path>.lock` exclusively (`flock`), so that one daemon at a time works from a
/// state file. Two daemons on one file would each load the ledger and each spend the whole quota
/// from its own copy of it.
///
/// `flock` belongs to the open file, and the kernel drops it when the process ends, however it
/// ends: a `kill -9` never leaves the file locked. The holder writes its pid into the file, so
/// the next one can say who holds it. A separate file, not the database itself: SQLite's own
/// POSIX locks on the database would be released by closing any other descriptor of it.
final class StateFileLock: Sendable {
    let path: String
    private let descriptor: Int32
    private let released = Atomic<Bool>(false)

    init(statePath: String) throws {
        path = statePath + ".lock"
        let fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        guard fd >= 0 else {
            throw StoreError(path: statePath, "cannot be locked: \(path) could not be opened (\(String(cString: strerror(errno))))")
        }
        guard flock(fd, LOCK_EX | LOCK_NB) == 0 else {
            let problem = errno
            let holder = Self.readPID(fd)
            close(fd)
            guard problem == EWOULDBLOCK else {
                throw StoreError(path: statePath, "cannot be locked (\(String(cString: strerror(problem))))")
            }
            let who = holder.map { "process \($0)" } ?? "another process"
            throw StoreError(
                path: statePath,
                "is in use by \(who), another mdegate serve: one daemon per state file (two would each spend "
                    + "the whole quota). Stop it (systemctl stop mdegate), or give this one its own state.path")
        }
        let pid = "\(getpid())\n"
        _ = ftruncate(fd, 0)
        _ = pid.withCString { pwrite(fd, $0, strlen($0), 0) }
        descriptor = fd
    }

    /// Lets go of the file (closing drops the lock). The file itself stays: removing it could
    /// let two later daemons each lock a file of their own under the same name.
    /// Safe to call more than once; the store's `close` calls it, and so does `deinit`.
    func release() {
        guard !released.exchange(true, ordering: .acquiringAndReleasing) else { return }
        _ = ftruncate(descriptor, 0)
        close(descriptor)
    }

    deinit {
        release()
    }

    private static func readPID(_ fd: Int32) -> Int32? {
        var buffer = [UInt8](repeating: 0, count: 32)
        let count = pread(fd, &buffer, buffer.count, 0)
        guard count > 0 else { return nil }
        return Int32(String(decoding: buffer[..<count], as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines))
    }
}
