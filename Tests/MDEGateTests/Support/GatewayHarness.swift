import Foundation
import Logging
import MDEGateCore
import MDEGateTransport
import NIOCore
import NIOPosix
import Synchronization
import Testing

@testable import MDEGate

/// An upstream that answers from a script and tells the test about every arrival, so that the
/// gateway's dispatch is tested in process: no socket, no simulator.
final class ScriptedUpstream: Upstream {
    let baseURL = "scripted://upstream"
    private struct State {
        var arrivals: [UpstreamCall] = []
        var answer: @Sendable (UpstreamCall) -> Result<TransportResponse, TransportError> = { _ in
            .success(TransportResponse(status: 200, headers: [.contentType: "application/json"], body: Array(#"{"status":"Cancelled"}"#.utf8)))
        }
        var listeners: [(count: Int, continuation: CheckedContinuation<Void, Never>)] = []
    }
    private let state = Mutex(State())

    /// What the upstream answers from now on.
    func answer(with script: @escaping @Sendable (UpstreamCall) -> Result<TransportResponse, TransportError>) {
        state.withLock { $0.answer = script }
    }

    var arrivals: [UpstreamCall] { state.withLock { $0.arrivals } }

    /// The machine action ids of the cancels that arrived, in order.
    var arrivedIDs: [String] {
        arrivals.map { $0.path.split(separator: "/")[2].description }
    }

    func send(_ call: UpstreamCall, token: String, completion: @escaping @Sendable (Result<TransportResponse, TransportError>) -> Void) {
        let (answer, ready) = state.withLock { state in
            state.arrivals.append(call)
            let count = state.arrivals.count
            let ready = state.listeners.filter { $0.count <= count }.map(\.continuation)
            state.listeners.removeAll { $0.count <= count }
            return (state.answer, ready)
        }
        for continuation in ready { continuation.resume() }
        completion(answer(call))
    }

    /// Returns once `count` calls have arrived.
    func arrived(_ count: Int) async {
        await withCheckedContinuation { continuation in
            let now = state.withLock { state in
                if state.arrivals.count >= count { return true }
                state.listeners.append((count, continuation))
                return false
            }
            if now { continuation.resume() }
        }
    }
}

/// A store in memory that a test can hold (a commit waits until the test lets it go, with the
/// result the test chooses) or make fail.
final class ControlledStore: GatewayStore {
    let inner = InMemoryStore()
    private struct State {
        var failing = false
        var holdNext = false
        var held: (changes: [StoreChange], completion: @Sendable (Result<Void, any Error>) -> Void)?
        var heldListeners: [CheckedContinuation<[StoreChange], Never>] = []
        var commits = 0
    }
    private let state = Mutex(State())

    func setFailing(_ failing: Bool) { state.withLock { $0.failing = failing } }
    /// The next commit waits for `release(failing:)`.
    func holdNextCommit() { state.withLock { $0.holdNext = true } }
    var commits: Int { state.withLock { $0.commits } }

    /// Returns the held commit's changes once a commit is held.
    func heldCommit() async -> [StoreChange] {
        await withCheckedContinuation { continuation in
            let held: [StoreChange]? = state.withLock { state in
                if let held = state.held { return held.changes }
                state.heldListeners.append(continuation)
                return nil
            }
            if let held { continuation.resume(returning: held) }
        }
    }

    /// Lets the held commit finish: written, or failed without writing anything.
    func release(failing: Bool) {
        guard let held = state.withLock({ state in defer { state.held = nil }; return state.held }) else { return }
        if failing {
            held.completion(.failure(StoreError(path: "controlled", "refused for the test")))
        } else {
            inner.commit(held.changes, completion: held.completion)
        }
    }

    func commit(_ changes: [StoreChange], completion: @escaping @Sendable (Result<Void, any Error>) -> Void) {
        enum Next { case hold([CheckedContinuation<[StoreChange], Never>]), fail, write }
        let next: Next = state.withLock { state in
            state.commits += 1
            if state.holdNext {
                state.holdNext = false
                state.held = (changes, completion)
                defer { state.heldListeners = [] }
                return .hold(state.heldListeners)
            }
            return state.failing ? .fail : .write
        }
        switch next {
        case .hold(let listeners): for listener in listeners { listener.resume(returning: changes) }
        case .fail: completion(.failure(StoreError(path: "controlled", "refused for the test")))
        case .write: inner.commit(changes, completion: completion)
        }
    }

    func load() async throws -> StoredState { try await inner.load() }
    func attempts(since: Timestamp) async throws -> [UpstreamAPI: [Timestamp]] { try await inner.attempts(since: since) }
    func requests(matching query: RequestQuery) async throws -> RequestPage { try await inner.requests(matching: query) }
}

/// A token source that always has the same token.
final class FixedToken: TokenSource {
    let mode = "token_file"
    func token(at now: Timestamp) -> Result<String, TokenError> { .success("test-token") }
    func rejected(_ token: String) {}
    var tokenExpiresAt: Timestamp? { nil }
    var lastError: String? { nil }
    func onChange(_ handler: @escaping @Sendable () -> Void) {}
}

extension Gateway.Settings {
    static func testing(_ limits: [Limit], guardBand: Duration = .zero, maxConcurrency: Int = 8) -> Self {
        Gateway.Settings(
            limits: limits, guardBand: guardBand,
            retryPolicy: RetryPolicy(maxAttempts: 4, initialBackoff: .milliseconds(50), maxBackoff: .milliseconds(100)),
            maxConcurrency: maxConcurrency, maxPending: 100)
    }
}

/// A gateway on a loop of its own with a scripted upstream and a fixed token.
func scriptedGateway(
    _ settings: Gateway.Settings, store: any GatewayStore, upstream: ScriptedUpstream
) -> Gateway {
    Gateway(
        settings: settings, store: store, upstream: upstream, tokens: FixedToken(),
        eventLoop: MultiThreadedEventLoopGroup.singleton.next(), logger: Logger(label: "test"))
}

let testClient = RequestRecord.Client(uid: 1000, pid: 42, name: "test")

extension Gateway {
    /// A reload to `limits` (everything else as `Settings.testing`): frees slots on demand.
    func loosen(to limits: [Limit]) async throws {
        try await reconfigure(settings: .testing(limits), upstream: upstream, tokens: tokens)
    }

    /// Submits and awaits the answer, for tests.
    func submitted(_ machineActionID: String, waiting: Waiting = .untilStored, client: RequestRecord.Client = testClient)
        async throws -> Answer
    {
        try await submit(.cancel(machineActionID, comment: "c"), client: client, waiting: waiting).get()
    }
}

extension Gateway.Answer {
    /// The request id of an accepted or final answer.
    var id: RequestID? {
        switch self {
        case .accepted(let document): document.id
        case .final(let record): record.id
        default: nil
        }
    }
}

/// Machine action ids for tests: `actionID(7)` is `988cc94e-7a8f-4b28-ab65-000000000007`.
func actionID(_ number: Int) -> String {
    "988cc94e-7a8f-4b28-ab65-" + String(format: "%012d", number)
}
