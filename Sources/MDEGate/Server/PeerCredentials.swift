import CMDEGateSystem
import Glibc
import NIOCore

/// Who is on the other end of a Unix socket connection, as the kernel vouches (SO_PEERCRED):
/// the basis of client identity and of the audit trail, and impossible for a client to fake.
public struct PeerCredentials: Sendable, Equatable {
    public var pid: Int32
    public var uid: UInt32
    public var gid: UInt32

    public init(pid: Int32, uid: UInt32, gid: UInt32) {
        self.pid = pid
        self.uid = uid
        self.gid = gid
    }

    /// Reads the peer credentials of an accepted Unix socket connection.
    static func read(from channel: any Channel) -> EventLoopFuture<PeerCredentials> {
        guard let provider = channel as? any SocketOptionProvider else {
            return channel.eventLoop.makeFailedFuture(ChannelError.operationUnsupported)
        }
        // SO_PEERCRED (17) returns a `struct ucred`; `mdegate_peer_credentials` has its layout.
        let future: EventLoopFuture<mdegate_peer_credentials> = provider.unsafeGetSocketOption(
            level: SocketOptionLevel(SOL_SOCKET), name: SocketOptionName(17))
        return future.map { PeerCredentials(pid: $0.pid, uid: $0.uid, gid: $0.gid) }
    }
}
