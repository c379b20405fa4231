import Foundation
import GRDB

extension SQLiteStore {
    static func createParentDirectory(of path: String) throws {
        let parent = URL(fileURLWithPath: path).deletingLastPathComponent().path
        var isDirectory: ObjCBool = false
        if FileManager.default.fileExists(atPath: parent, isDirectory: &isDirectory) {
            guard isDirectory.boolValue else {
                throw StoreError(
                    path: path,
                    "cannot be created: \(parent) is a file, not a directory; set state.path to a file in a "
                        + "writable directory (the default is /var/lib/mdegate/state.sqlite)")
            }
            return
        }
        do {
            // Private: the state holds who asked for what.
            try FileManager.default.createDirectory(
                atPath: parent, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        } catch {
            throw StoreError(
                path: path,
                "cannot be created: its directory \(parent) could not be made (\(error)); create it writable "
                    + "for the mdegate user (systemd: StateDirectory=mdegate) or set state.path elsewhere")
        }
    }
}

/// Why the state database could not be opened, read or written. It names `state.path`, says
/// what went wrong and what to do, because an operator reads it at start-up.
public struct StoreError: Error, Sendable, CustomStringConvertible {
    public var description: String

    init(path: String, _ problem: String) {
        description = "state.path \"\(path)\" \(problem)"
    }

    /// Translates SQLite's result code at open/migration time into advice.
    init(opening path: String, _ error: any Error) {
        guard let error = error as? DatabaseError else {
            self.init(path: path, "could not be opened: \(error)")
            return
        }
        let sqlite = error.message ?? "\(error.resultCode)"
        switch error.resultCode {
        case .SQLITE_NOTADB, .SQLITE_CORRUPT:
            self.init(
                path: path,
                "is not an SQLite database or is damaged (\(sqlite)); move it away (mdegate then starts with an "
                    + "empty queue and ledger) or set state.path to another file")
        case .SQLITE_CANTOPEN:
            self.init(
                path: path,
                "cannot be opened (\(sqlite)); check that it is a file in a directory the mdegate user can "
                    + "write, or set state.path elsewhere")
        case .SQLITE_READONLY, .SQLITE_PERM, .SQLITE_AUTH:
            self.init(
                path: path,
                "is not writable (\(sqlite)); give the mdegate user write access to the file, its -wal and "
                    + "-shm companions and their directory")
        case .SQLITE_BUSY, .SQLITE_LOCKED:
            self.init(
                path: path, "is locked by another process (\(sqlite)); is another mdegate running with this state.path?")
        case .SQLITE_FULL:
            self.init(path: path, "cannot grow: the disk is full (\(sqlite)); free some space")
        default:
            self.init(path: path, "could not be opened: \(sqlite) (\(error.resultCode))")
        }
    }
}
