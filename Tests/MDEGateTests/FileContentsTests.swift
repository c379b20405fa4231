import Foundation
import MDEGateConfig
import MDEGateCore
import Testing

@testable import MDEGate

@Suite("Reading the configuration and credential files", .timeLimit(.minutes(SuiteTime.minutes)))
struct FileContentsTests {
    /// A directory of the test's own, removed afterwards.
    private func withDirectory<T>(_ body: (String) throws -> T) throws -> T {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("mdg-file-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: false)
        defer { try? FileManager.default.removeItem(atPath: path) }
        return try body(path)
    }

    @Test("a file is read whole, byte for byte, also when it is longer than one read")
    func readsWholeFile() throws {
        try withDirectory { directory in
            let bytes = (0..<10_000).map { UInt8(truncatingIfNeeded: $0 &* 31) }
            let path = "\(directory)/token"
            try Data(bytes).write(to: URL(fileURLWithPath: path))
            #expect((try? FileContents.read(atPath: path)) == bytes)
        }
    }

    @Test("an empty file is no bytes, and a token file that is empty says so")
    func emptyFile() throws {
        try withDirectory { directory in
            let path = "\(directory)/token"
            #expect(FileManager.default.createFile(atPath: path, contents: nil))
            #expect((try? FileContents.read(atPath: path)) == [])
            // Read again at once: a failure is not cached, so every dispatch round reads the file
            // (and, through FileManager, leaked 4 KiB each time; make test-sanitizers checks that).
            for _ in 0..<3 {
                guard case .failure(let error) = TokenFileProvider(path: path).token(at: Gateway.wallClock()) else {
                    Issue.record("an empty token file gave a token")
                    return
                }
                #expect(error.message.contains("is empty"))
            }
        }
    }

    @Test("a missing file, a directory and a FIFO are not read")
    func notRegularFiles() throws {
        try withDirectory { directory in
            #expect((try? FileContents.read(atPath: "\(directory)/missing")) == nil)
            #expect((try? FileContents.read(atPath: directory)) == nil)
            let fifo = "\(directory)/fifo"
            #expect(mkfifo(fifo, 0o600) == 0)
            #expect((try? FileContents.read(atPath: fifo)) == nil)
        }
    }
}
