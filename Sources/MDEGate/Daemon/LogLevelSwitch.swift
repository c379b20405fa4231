import Logging
import Synchronization

/// The daemon's log level, shared by every logger so that a reload can change it while running.
///
/// swift-log asks a handler for its level on every call, so a handler that reads this switch
/// follows a change at once; a logger whose level was set explicitly keeps its own.
public final class LogLevelSwitch: Sendable {
    private let index: Atomic<Int>

    public init(_ level: Logger.Level) {
        index = Atomic(Self.index(of: level))
    }

    public var level: Logger.Level {
        get { Logger.Level.allCases[index.load(ordering: .relaxed)] }
        set { index.store(Self.index(of: newValue), ordering: .relaxed) }
    }

    /// A handler factory for `LoggingSystem.bootstrap`: standard error in `format`, at this
    /// switch's level.
    public func standardErrorHandler(format: LogLineFormat) -> @Sendable (String) -> any LogHandler {
        { label in SwitchedLogHandler(base: LineLogHandler(label: label, format: format), levelSwitch: self) }
    }

    private static func index(of level: Logger.Level) -> Int {
        Logger.Level.allCases.firstIndex(of: level) ?? 0
    }
}

/// Writes through another handler; its level comes from the switch unless set on the logger.
struct SwitchedLogHandler: LogHandler {
    var base: any LogHandler
    let levelSwitch: LogLevelSwitch
    private var explicitLevel: Logger.Level?

    init(base: any LogHandler, levelSwitch: LogLevelSwitch) {
        self.base = base
        self.levelSwitch = levelSwitch
    }

    var logLevel: Logger.Level {
        get { explicitLevel ?? levelSwitch.level }
        set { explicitLevel = newValue }
    }

    var metadata: Logger.Metadata {
        get { base.metadata }
        set { base.metadata = newValue }
    }

    var metadataProvider: Logger.MetadataProvider? {
        get { base.metadataProvider }
        set { base.metadataProvider = newValue }
    }

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { base[metadataKey: key] }
        set { base[metadataKey: key] = newValue }
    }

    func log(event: LogEvent) {
        // Logger has already compared the event with `logLevel`; the base writes what it is given.
        base.log(event: event)
    }
}
