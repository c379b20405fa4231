import Configuration
import Foundation
import Synchronization

/// The YAML configuration file, parsed by swift-configuration's `YAMLSnapshot`, together with
/// the list of keys it contains.
///
/// `FileProvider` would parse the same way but is `async` and keeps the key list to itself;
/// reading the bytes here keeps loading synchronous (check-config, a SIGHUP reload and tests
/// call it from anywhere) and lets the missing-file message name the path plainly.
struct ConfigurationFile: ConfigProvider {
    /// The dotted keys of every value in the file (leaves only: `quota.limits`, not `quota`).
    let keys: [String]
    /// Top-level keys written with nothing under them (`auth:` with its lines commented out).
    let emptyKeys: Set<String>
    private let parsed: YAMLSnapshot

    /// Keys whose values may carry a secret and so are redacted in swift-configuration's own
    /// access logs (`CONFIG_ACCESS_LOG_FILE`): a proxy URL can hold `user:password@`.
    static let secretKeys: Set<String> = [ConfigurationKey.upstreamProxy.rawValue]

    /// Reads and parses the file; throws a ``ConfigurationError`` naming the path when the file
    /// is missing, unreadable or not YAML.
    init(path: String) throws {
        guard FileManager.default.fileExists(atPath: path) else {
            throw ConfigurationError(
                key: nil,
                message: "configuration file \(path) does not exist; create it (config/mdegate.yaml "
                    + "is a documented example) or pass another with --config")
        }
        let data: Data
        do {
            data = Data(try FileContents.read(atPath: path))
        } catch {
            throw ConfigurationError(
                key: nil,
                message: "configuration file \(path) cannot be read (\(error)); "
                    + "check its permissions: the mdegate user needs to read it")
        }
        // A file whose every line is commented out is a valid, empty configuration, but YAML
        // gives it no top-level mapping and YAMLSnapshot refuses it.
        let text = String(decoding: data, as: UTF8.self)
        let source = Self.isBlank(text) ? Data("{}".utf8) : data

        // YAMLSnapshot asks its secrets specifier about every value's key while parsing: the
        // one place the library shows which keys a file holds. Collect them there to warn
        // about the ones we do not know.
        let collected = KeyCollector()
        let options = YAMLSnapshot.ParsingOptions(
            secretsSpecifier: .dynamic { key, _ in
                collected.keys.withLock { $0.append(key) }
                return Self.secretKeys.contains(key)
            })
        do {
            parsed = try YAMLSnapshot(data: source.bytes, providerName: "file \(path)", parsingOptions: options)
        } catch {
            throw ConfigurationError(
                key: nil,
                message: "configuration file \(path) cannot be parsed; fix it (config/mdegate.yaml shows "
                    + "the expected layout: a mapping of sections such as `quota:`): \(error)")
        }
        let all = collected.keys.withLock { $0 }
        keys = all
        // A section written without content (`auth:` and nothing below) parses as a null value
        // under the section's own name; it means "defaults", not a typo.
        var empty: Set<String> = []
        for key in all where !key.contains(".") {
            let value = try? parsed.value(forKey: AbsoluteConfigKey([key]), type: .string).value?.content
            if case .string(let string)? = value, ScalarText.isNull(string) { empty.insert(key) }
        }
        emptyKeys = empty
    }

    private static func isBlank(_ text: String) -> Bool {
        text.split(whereSeparator: \.isNewline).allSatisfy { line in
            let trimmed = line.drop { $0 == " " || $0 == "\t" }
            return trimmed.isEmpty || trimmed.hasPrefix("#") || trimmed == "---" || trimmed == "..."
        }
    }

    var providerName: String { parsed.providerName }

    func value(forKey key: AbsoluteConfigKey, type: ConfigType) throws -> LookupResult {
        try parsed.value(forKey: key, type: type)
    }

    func fetchValue(forKey key: AbsoluteConfigKey, type: ConfigType) async throws -> LookupResult {
        try value(forKey: key, type: type)
    }

    func watchValue<Return: ~Copyable>(
        forKey key: AbsoluteConfigKey,
        type: ConfigType,
        updatesHandler: nonisolated(nonsending) (ConfigUpdatesAsyncSequence<Result<LookupResult, any Error>, Never>) async throws -> Return
    ) async throws -> Return {
        try await watchValueFromValue(forKey: key, type: type, updatesHandler: updatesHandler)
    }

    func snapshot() -> any ConfigSnapshot { parsed }

    func watchSnapshot<Return: ~Copyable>(
        updatesHandler: nonisolated(nonsending) (ConfigUpdatesAsyncSequence<any ConfigSnapshot, Never>) async throws -> Return
    ) async throws -> Return {
        try await watchSnapshotFromSnapshot(updatesHandler: updatesHandler)
    }
}

/// The keys YAMLSnapshot reported while parsing (a class: the collecting closure escapes).
private final class KeyCollector: Sendable {
    let keys = Mutex<[String]>([])
}

/// How YAML spells "nothing": `key:`, `key: ~`, `key: null`. The library hands scalars over as
/// their text, so these arrive as strings and are treated like an empty string, i.e. unset.
enum ScalarText {
    static func isNull(_ text: String) -> Bool {
        ["", "~", "null", "Null", "NULL"].contains(text.trimmingCharacters(in: .whitespaces))
    }
}
