/// Why a configuration was refused: start-up (or a reload) stops and the operator reads this.
///
/// It lists every problem found, not just the first, so one edit fixes them all. Each problem
/// names the key (and the environment variable when the value came from one), the value, what
/// is wrong with it and what to write instead, e.g.
/// `quota.limits[1]: "100/1x" is not a limit; write N/duration such as "100/1m" (units ms, s, m, h)`.
public struct ConfigurationError: Error, CustomStringConvertible, Equatable, Sendable {
    /// One thing wrong with the configuration.
    public struct Problem: Sendable, Equatable, CustomStringConvertible {
        /// The key the problem is about, such as `quota.limits[1]`; nil for problems with the
        /// file itself (missing, unreadable, not YAML).
        public var key: String?
        /// The full sentence shown to the operator.
        public var message: String

        public init(key: String?, message: String) {
            self.key = key
            self.message = message
        }

        public var description: String { message }
    }

    public var problems: [Problem]

    public init(problems: [Problem]) {
        precondition(!problems.isEmpty, "a configuration error needs at least one problem")
        self.problems = problems
    }

    init(key: String?, message: String) {
        self.init(problems: [Problem(key: key, message: message)])
    }

    /// The keys named by the problems, in order (file-level problems have none).
    public var keys: [String] { problems.compactMap(\.key) }

    public var description: String {
        problems.map(\.message).joined(separator: "\n")
    }
}
