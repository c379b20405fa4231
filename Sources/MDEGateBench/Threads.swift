import Dispatch
import Foundation
import Synchronization

/// Runs `body(index)` on `count` dedicated threads and waits for all of them without blocking
/// the caller's executor. Benchmark clients use blocking sockets on their own threads, so they
/// cost one system call per read or write and never wait for a free task executor.
func onThreads(_ count: Int, _ body: @escaping @Sendable (Int) -> Void) async {
    let group = DispatchGroup()
    for index in 0..<count {
        group.enter()
        let thread = Thread {
            body(index)
            group.leave()
        }
        thread.stackSize = 512 * 1024
        thread.start()
    }
    await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
        group.notify(queue: .global()) { continuation.resume() }
    }
}

/// A value several benchmark threads write to, read once they have all finished.
final class Shared<Value: Sendable>: Sendable {
    private let storage: Mutex<Value>

    init(_ value: Value) { storage = Mutex(value) }

    func update<Result: Sendable>(_ body: (inout Value) -> Result) -> Result {
        storage.withLock { body(&$0) }
    }

    var value: Value { storage.withLock { $0 } }
}

/// Hands out request numbers to threads: each number exactly once, until `limit`.
final class Ticket: Sendable {
    private let next = Atomic<Int>(0)
    let limit: Int

    init(limit: Int) { self.limit = limit }

    func take() -> Int? {
        let number = next.wrappingAdd(1, ordering: .relaxed).oldValue
        return number < limit ? number : nil
    }
}

/// A distinct, valid machine action id for request `number` (lowercase GUID, never the
/// simulator's "not found" prefix 00000000).
func machineActionID(_ number: Int, tag: String) -> String {
    let hex = String(number, radix: 16)
    return "\(tag)-0000-4000-8000-" + String(repeating: "0", count: max(0, 12 - hex.count)) + hex
}

let cancelBody = Array(#"{"Comment":"mdegate-bench"}"#.utf8)
