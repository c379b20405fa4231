import Foundation
import Glibc
import Synchronization

/// Holds `<state.path>.lock` exclusively (a POSIX record lock, `fcntl(F_SETLK)`), so that one
/// daemon at a time works from a state file. Two daemons on one file would each load the ledger
/// and each spend the whole quota from its own copy of it.
///
/// The lock belongs to the process: the kernel drops it when the process ends, however it ends
/// (a `kill -9` never leaves the file locked), a child process never inherits it, and the next
/// process can ask the kernel who holds it (`F_GETLK`). A separate file, not the database itself:
/// closing any descriptor of a file drops the process's POSIX locks on it, SQLite's own included.
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
        var whole = Self.wholeFile(F_WRLCK)
        guard fcntl(fd, F_SETLK, &whole) == 0 else {
            let problem = errno
            let holder = Self.holder(fd) ?? Self.readPID(fd)
            close(fd)
            guard problem == EAGAIN || problem == EACCES else {
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

    /// Lets go of the file (closing its only descriptor drops the lock). The file itself stays: removing it could
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

    /// A lock description of the whole file.
    private static func wholeFile(_ type: Int32) -> Glibc.flock {
        var lock = Glibc.flock()
        lock.l_type = Int16(type)
        lock.l_whence = Int16(SEEK_SET)
        lock.l_start = 0
        lock.l_len = 0
        return lock
    }

    /// The pid of the process holding the lock, as the kernel knows it.
    private static func holder(_ fd: Int32) -> Int32? {
        var probe = wholeFile(F_WRLCK)
        guard fcntl(fd, F_GETLK, &probe) == 0, probe.l_type != Int16(F_UNLCK), probe.l_pid > 0 else { return nil }
        return probe.l_pid
    }

    /// The pid the holder wrote into the file, when the kernel cannot say.
    private static func readPID(_ fd: Int32) -> Int32? {
        var buffer = [UInt8](repeating: 0, count: 32)
        let count = pread(fd, &buffer, buffer.count, 0)
        guard count > 0 else { return nil }
        return Int32(String(decoding: buffer[..<count], as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines))
    }
}
