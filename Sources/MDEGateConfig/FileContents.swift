import Foundation

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Reads the small files the daemon is pointed at whole: the configuration file and the
/// credential files (`auth.token_file`, `auth.client_secret_file`, the client certificate and
/// its key).
///
/// Not `FileManager.contents(atPath:)` or `Data(contentsOf:)`: in the Foundation of Swift 6.3 on
/// Linux, reading an *empty* file that way leaks a 4 KiB buffer (files that report size 0 are
/// read in chunks, for /proc's sake, and an empty result is returned without freeing the first
/// chunk). The token file is read again on every dispatch round while it is empty, so the
/// daemon leaked 4 KiB a round for as long as the file stayed empty. LeakSanitizer found it
/// (`make test-sanitizers`).
public enum FileContents {
    /// Why a file could not be read, in words (`strerror`, or "not a regular file").
    public struct Failure: Error, CustomStringConvertible {
        public var description: String
    }

    /// The file's bytes. Refuses what is not a regular file (a directory, a FIFO) instead of
    /// blocking on it.
    public static func read(atPath path: String) throws(Failure) -> [UInt8] {
        let descriptor = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK)
        guard descriptor >= 0 else { throw Failure(description: String(cString: strerror(errno))) }
        defer { close(descriptor) }
        var status = stat()
        guard fstat(descriptor, &status) == 0 else { throw Failure(description: String(cString: strerror(errno))) }
        guard (status.st_mode & S_IFMT) == S_IFREG else { throw Failure(description: "not a regular file") }
        var contents: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 4096)
        while true {
            let count = chunk.withUnsafeMutableBytes { readSome(descriptor, into: $0) }
            if count == 0 { return contents }
            if count < 0 {
                if errno == EINTR { continue }
                throw Failure(description: String(cString: strerror(errno)))
            }
            contents.append(contentsOf: chunk[0..<count])
        }
    }
}

/// `read(2)`, under a name the static `read(atPath:)` does not shadow.
private func readSome(_ descriptor: Int32, into buffer: UnsafeMutableRawBufferPointer) -> Int {
    read(descriptor, buffer.baseAddress, buffer.count)
}
