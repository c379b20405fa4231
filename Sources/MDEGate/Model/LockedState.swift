import Synchronization

/// A value behind a mutex, for the few places where state is shared across threads without an
/// actor (caches read from synchronous code).
public final class LockedState<Value: Sendable>: Sendable {
    private let mutex: Mutex<Value>

    public init(_ value: Value) {
        mutex = Mutex(value)
    }

    public func withLock<Result: Sendable>(_ body: (inout sending Value) throws -> sending Result) rethrows -> Result {
        try mutex.withLock(body)
    }
}
