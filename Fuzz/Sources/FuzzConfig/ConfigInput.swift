import Foundation
import MDEGateConfig

/// One input of FuzzConfig: its format and invariants are described in main.swift.
enum ConfigInput {
    /// Environment names a short NAME stands for: every key's, the two client-side ones, the
    /// systemd credentials directory, and a typo.
    static let names: [String] =
        ConfigurationKey.allCases.map(\.environmentName)
        + ["MDEGATE_SOCKET", "MDEGATE_CONFIG", "CREDENTIALS_DIRECTORY", "MDEGATE_UPSTREAM_BASEURL"]

    static let directory: String = {
        let base = FileManager.default.fileExists(atPath: "/dev/shm") ? "/dev/shm" : NSTemporaryDirectory()
        let path = base + "/mdegate-fuzz-config-\(getpid())"
        try? FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        return path
    }()
    static let filePath = directory + "/config.yaml"
    static let renderedPath = directory + "/rendered.yaml"

    static func split(_ bytes: [UInt8]) -> (yaml: [UInt8], environment: [String: String]) {
        let marker = Array("\n%env\n".utf8)
        var cut: Int?
        if bytes.count >= marker.count {
            for index in 0...(bytes.count - marker.count) where bytes[index] == 10 {
                if Array(bytes[index..<index + marker.count]) == marker {
                    cut = index
                    break
                }
            }
        }
        guard let cut else { return (bytes, [:]) }
        var environment: [String: String] = [:]
        let text = String(decoding: bytes[(cut + marker.count)...], as: UTF8.self)
        for line in text.split(separator: "\n") {
            let parts = line.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            // A process's environment cannot hold a NUL (execve takes C strings).
            guard parts.count == 2, !parts[0].isEmpty, !line.contains("\0") else { continue }
            let given = String(parts[0])
            let name = given.utf8.count <= 2 ? names[given.utf8.reduce(0) { $0 + Int($1) } % names.count] : given
            environment[name] = String(parts[1])
        }
        return (Array(bytes[..<cut]), environment)
    }

    static func check(yaml: [UInt8], environment: [String: String]) {
        write(yaml, to: filePath)
        let loaded: LoadedConfiguration
        do {
            loaded = try GatewayConfiguration.load(path: filePath, environment: environment, workingDirectory: "/srv")
        } catch let error as ConfigurationError {
            checkNamesKeys(error)
            checkNoSecrets(in: error.problems.map(\.message), yaml: yaml, environment: environment)
            return
        } catch {
            fail("load threw \(type(of: error)), not a ConfigurationError: \(error)")
        }
        checkNoSecrets(in: loaded.warnings, yaml: yaml, environment: environment)
        checkRoundTrip(loaded.configuration)
    }

    static func checkNamesKeys(_ error: ConfigurationError) {
        let keys = Set(ConfigurationKey.allCases.map(\.rawValue))
        for problem in error.problems {
            if let key = problem.key {
                let base = String(key.prefix { $0 != "[" })
                guard keys.contains(base) else { fail("problem names an unknown key \(key): \(problem.message)") }
                guard problem.message.hasPrefix(key + ":") || problem.message.hasPrefix(key + " (from ") else {
                    fail("problem about \(key) does not start with it: \(problem.message)")
                }
            } else {
                guard problem.message.contains(filePath) else { fail("problem names neither a key nor the file: \(problem.message)") }
            }
        }
    }

    /// A proxy URL (it may carry a password) and a shared-quota URL's password never appear in
    /// what the operator reads. Only values long and particular enough to be told apart from
    /// the messages' own text are looked for.
    static func checkNoSecrets(in messages: [String], yaml: [UInt8], environment: [String: String]) {
        let yamlText = String(decoding: yaml, as: UTF8.self)
        var secrets: [(name: String, value: String)] = []
        if let proxy = environment[ConfigurationKey.upstreamProxy.environmentName] {
            secrets.append(("MDEGATE_UPSTREAM_PROXY", proxy.trimmingCharacters(in: .whitespaces)))
        }
        if let url = environment[ConfigurationKey.sharedQuotaURL.environmentName],
            let password = URLComponents(string: url.trimmingCharacters(in: .whitespaces))?.password
        {
            secrets.append(("the password of MDEGATE_SHARED_QUOTA_URL", password))
        }
        for (name, secret) in secrets where secret.count >= 12 && !yamlText.contains(secret) {
            let elsewhere = environment.contains { key, value in
                key != ConfigurationKey.upstreamProxy.environmentName && key != ConfigurationKey.sharedQuotaURL.environmentName
                    && (value.contains(secret) || key.contains(secret))
            }
            if elsewhere { continue }
            for message in messages where message.contains(secret) {
                // Text the message holds whatever the value (a key's environment name, an
                // example URL) is not an echo: look for it with the value replaced.
                if templateText(environment: environment, contains: secret) { break }
                fail("\(name) is echoed: \(message)")
            }
        }
    }

    /// Whether `secret` is in the problems or warnings of this input (the file at `filePath` and
    /// `environment`) with both secret-holding values replaced, by a value of the wrong shape and
    /// by a valid one.
    static func templateText(environment: [String: String], contains secret: String) -> Bool {
        let replacements = [
            ("not a URL", "postgresql://mdegate:~@db.invalid/mdegate"),
            ("http://198.51.100.7:3128", "postgresql://mdegate@db.invalid/mdegate"),
        ]
        return replacements.contains { proxy, sharedQuotaURL in
            var replaced = environment
            if replaced[ConfigurationKey.upstreamProxy.environmentName] != nil {
                replaced[ConfigurationKey.upstreamProxy.environmentName] = proxy
            }
            if replaced[ConfigurationKey.sharedQuotaURL.environmentName] != nil {
                replaced[ConfigurationKey.sharedQuotaURL.environmentName] = sharedQuotaURL
            }
            let messages: [String]
            do {
                messages = try GatewayConfiguration.load(path: filePath, environment: replaced, workingDirectory: "/srv").warnings
            } catch let error as ConfigurationError {
                messages = error.problems.map(\.message)
            } catch {
                return false
            }
            return messages.contains { $0.contains(secret) }
        }
    }

    static func checkRoundTrip(_ configuration: GatewayConfiguration) {
        let rendered = configuration.renderedYAML()
        write(Array(rendered.utf8), to: renderedPath)
        var reloaded: GatewayConfiguration
        do {
            reloaded = try GatewayConfiguration.load(path: renderedPath, environment: [:], workingDirectory: "/srv").configuration
        } catch {
            fail("check-config's output does not load again: \(error)\n--- rendered:\n\(rendered)")
        }
        var expected = configuration
        if let proxy = configuration.upstream.proxy, URLComponents(string: proxy)?.password != nil {
            expected.upstream.proxy = reloaded.upstream.proxy
        }
        if reloaded != expected {
            fail("check-config's output loads to another configuration:\n\(diff(expected, reloaded))\n--- rendered:\n\(rendered)")
        }
    }

    private static func diff(_ a: GatewayConfiguration, _ b: GatewayConfiguration) -> String {
        let left = Mirror(reflecting: a).children
        let right = Mirror(reflecting: b).children
        return zip(left, right).compactMap { l, r in
            "\(l.value)" == "\(r.value)" ? nil : "\(l.label ?? "?"): \(l.value)\n  became \(r.value)"
        }.joined(separator: "\n")
    }

    private static func write(_ bytes: [UInt8], to path: String) {
        guard FileManager.default.createFile(atPath: path, contents: Data(bytes)) else {
            fail("cannot write \(path)")
        }
    }
}

func fail(_ message: String) -> Never {
    fatalError("FuzzConfig invariant broken: \(message)")
}
