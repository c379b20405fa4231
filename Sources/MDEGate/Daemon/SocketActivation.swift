import Foundation
import Glibc

/// A listening socket handed to this process by systemd (`mdegate.socket`) or
/// `systemd-socket-activate`. systemd keeps its own copy open, so connections that arrive while the
/// daemon restarts wait in the kernel's backlog instead of failing.
public struct ListeningSocket: Sendable, CustomStringConvertible {
    public let descriptor: Int32
    /// The socket file, as the kernel reports it (the socket unit's `ListenStream=`).
    public let path: String

    /// Checks that `descriptor` is what mdegate can serve: a listening Unix stream socket. Peer
    /// credentials, and so client identity, exist only on Unix sockets.
    public init(adopting descriptor: Int32) throws {
        func integerOption(_ name: Int32) -> Int32? {
            var value: Int32 = 0
            var length = socklen_t(MemoryLayout<Int32>.size)
            return getsockopt(descriptor, SOL_SOCKET, name, &value, &length) == 0 ? value : nil
        }
        guard let type = integerOption(SO_TYPE) else {
            throw DaemonError(
                "systemd passed descriptor \(descriptor), which is not a socket (\(String(cString: strerror(errno)))); check ListenStream= in mdegate.socket")
        }
        var address = sockaddr_un()
        var length = socklen_t(MemoryLayout<sockaddr_un>.size)
        let named = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(descriptor, $0, &length) }
        }
        guard named == 0, address.sun_family == sa_family_t(AF_UNIX), type == Int32(SOCK_STREAM.rawValue) else {
            throw DaemonError(
                "systemd passed descriptor \(descriptor), which is not a Unix stream socket; mdegate.socket must use ListenStream=/path (a file system path, so peer credentials identify clients)")
        }
        guard integerOption(SO_ACCEPTCONN) == 1 else {
            throw DaemonError(
                "systemd passed descriptor \(descriptor), a connection rather than a listening socket; set Accept=no in mdegate.socket")
        }
        let pathLength = max(0, Int(length) - MemoryLayout<sa_family_t>.size)
        let path = withUnsafeBytes(of: &address.sun_path) { raw in
            String(decoding: raw.prefix(pathLength).prefix { $0 != 0 }, as: UTF8.self)
        }
        // sd_listen_fds sets close-on-exec on what it hands out; mdegate starts no programs, but a
        // library that did must not pass the door on.
        _ = fcntl(descriptor, F_SETFD, fcntl(descriptor, F_GETFD) | FD_CLOEXEC)
        self.descriptor = descriptor
        self.path = path.isEmpty ? "(unnamed socket)" : path
    }

    public var description: String { "\(path) (descriptor \(descriptor) from systemd)" }
}

/// systemd's socket activation protocol (sd_listen_fds): passed descriptors start at 3, and
/// `LISTEN_PID` says which process they are for, so a child that inherited the environment does
/// not mistake them for its own.
public enum SocketActivation {
    /// The first passed descriptor (`SD_LISTEN_FDS_START`).
    public static let firstDescriptor: Int32 = 3

    /// The descriptor systemd passed to this process, or nil when it was started directly.
    ///
    /// `LISTEN_PID`, `LISTEN_FDS` and `LISTEN_FDNAMES` are removed from the environment either way,
    /// as sd_listen_fds(unset_environment: true) does. Call it once, at start-up, before other
    /// threads read the environment. mdegate.socket passes one socket; further ones are ignored.
    public static func listenFD() -> Int32? {
        let listenPID = environmentValue("LISTEN_PID").flatMap { pid_t($0) }
        let listenFDs = environmentValue("LISTEN_FDS").flatMap { Int32($0) } ?? 0
        for name in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] { unsetenv(name) }
        guard listenPID == getpid(), listenFDs >= 1 else { return nil }
        return firstDescriptor
    }

    private static func environmentValue(_ name: String) -> String? {
        getenv(name).map { String(cString: $0) }
    }
}
