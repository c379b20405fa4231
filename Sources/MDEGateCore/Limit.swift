/// One rate limit of the upstream: at most `calls` attempts in any window of length `window`.
///
/// Written in configuration as `"N/duration"`, e.g. `"100/1m"` or `"1500/1h"`.
public struct Limit: Hashable, Sendable, CustomStringConvertible {
    public var calls: Int
    public var window: Duration

    public init(calls: Int, window: Duration) {
        precondition(calls > 0 && window > .zero, "a limit needs at least one call and a positive window")
        self.calls = calls
        self.window = window
    }

    /// Parses `"N/duration"`; nil when N is not a positive integer or the duration is not valid
    /// (see `Duration.init?(configString:)`) or zero.
    public init?(spec: String) {
        let parts = spec.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count == 2,
            let calls = Int(parts[0].filter { $0 != " " }), calls > 0,
            let window = Duration(configString: String(parts[1])), window > .zero
        else { return nil }
        self.init(calls: calls, window: window)
    }

    /// The configuration form, e.g. `100/1m`.
    public var spec: String { "\(calls)/\(window.configString)" }

    public var description: String { spec }
}
