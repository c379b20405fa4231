import Foundation

/// Where the executables under test are: `MDEGATE_BIN_DIR` if set, else next to the test bundle
/// (`swift build --build-tests` puts `mdegate` and `mde-simulator` in the same directory).
enum Binaries {
    static let directory: URL = {
        if let directory = ProcessInfo.processInfo.environment["MDEGATE_BIN_DIR"], !directory.isEmpty {
            return URL(fileURLWithPath: directory, isDirectory: true)
        }
        return URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
    }()

    static var gateway: URL { directory.appendingPathComponent("mdegate") }
    static var simulator: URL { directory.appendingPathComponent("mde-simulator") }
}

/// A fresh directory of the test's own, with a short path: a Unix socket path has at most 107 bytes.
struct TemporaryDirectory: Sendable {
    let path: String

    init() throws {
        var template = Array("/tmp/mdg-XXXXXXXX".utf8CString)
        let created = template.withUnsafeMutableBufferPointer { mkdtemp($0.baseAddress!) }
        guard created != nil else {
            throw HarnessError("cannot create a temporary directory under /tmp: \(String(cString: strerror(errno)))")
        }
        path = String(decoding: template.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    func file(_ name: String) -> String {
        "\(path)/\(name)"
    }

    func write(_ text: String, to name: String) throws {
        try text.write(toFile: file(name), atomically: true, encoding: .utf8)
    }

    func remove() {
        try? FileManager.default.removeItem(atPath: path)
    }
}
