import CCurl
import Logging
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Runs libcurl's multi handle on a thread of its own.
///
/// libcurl blocks while it waits for sockets, and a multi handle must only be used from one
/// thread at a time. Giving it a dedicated thread that sleeps in `curl_multi_poll` keeps Swift
/// concurrency's few cooperative threads free, and lets any number of transfers share one
/// connection cache (keep-alive, HTTP/2 multiplexing). Other threads talk to the loop only
/// through `inbox` and wake it with `curl_multi_wakeup`, the one multi call libcurl allows from
/// another thread.
///
/// Why `@unchecked Sendable` is sound: `multi` is used by the loop thread alone (other threads
/// only call `curl_multi_wakeup`, and only while the inbox says the loop is running, so never
/// after the loop thread cleaned the handle up); everything else that is shared is in the mutex.
final class CurlMultiLoop: @unchecked Sendable {
    private enum Phase {
        case running, stopping, stopped
    }

    private struct Inbox {
        var phase = Phase.running
        var submitted: [CurlEasyTransfer] = []
        var cancelled: [CurlEasyTransfer] = []
        var thread: pthread_t?
    }

    private let multi: OpaquePointer
    private let inbox = Mutex(Inbox())
    private let logger: Logger

    init(maxHostConnections: Int, logger: Logger) throws(TransportError) {
        try CurlGlobal.initialize()
        guard let multi = curl_multi_init() else {
            throw TransportError(kind: .other, message: "libcurl could not create a multi handle (out of memory?)")
        }
        self.multi = multi
        self.logger = logger

        let options: [(CURLMoption, Int)] = [
            (CURLMOPT_PIPELINING, Int(CURLPIPE_MULTIPLEX)),
            (CURLMOPT_MAX_HOST_CONNECTIONS, maxHostConnections),
            // Idle connections kept for reuse: every upstream connection plus the token endpoint's.
            (CURLMOPT_MAXCONNECTS, maxHostConnections + 2),
        ]
        for (option, value) in options where mdegate_curl_multi_setopt_long(multi, option, value) != CURLM_OK {
            curl_multi_cleanup(multi)
            throw TransportError(kind: .other, message: "libcurl refused multi option \(option.rawValue)")
        }
        try startThread()
    }

    private func startThread() throws(TransportError) {
        // The thread owns a reference to the loop until `run` returns.
        let context = Unmanaged.passRetained(self).toOpaque()
        var thread = pthread_t()
        let result = pthread_create(&thread, nil, { context in
            let loop = Unmanaged<CurlMultiLoop>.fromOpaque(context!).takeRetainedValue()
            loop.run()
            return nil
        }, context)
        guard result == 0 else {
            Unmanaged<CurlMultiLoop>.fromOpaque(context).release()
            curl_multi_cleanup(multi)
            throw TransportError(kind: .other, message: "cannot start the transport thread: \(String(cString: strerror(result)))")
        }
        inbox.withLock { $0.thread = thread }
    }

    /// Hands a configured transfer to the loop; false once the loop is shutting down.
    func submit(_ transfer: CurlEasyTransfer) -> Bool {
        inbox.withLock { inbox in
            guard inbox.phase == .running else { return false }
            inbox.submitted.append(transfer)
            curl_multi_wakeup(multi)
            return true
        }
    }

    /// Asks the loop to abort a transfer. The transfer's own flag covers the case where the
    /// request arrives before the transfer itself.
    func cancel(_ transfer: CurlEasyTransfer) {
        transfer.requestCancellation()
        inbox.withLock { inbox in
            guard inbox.phase == .running else { return }
            inbox.cancelled.append(transfer)
            curl_multi_wakeup(multi)
        }
    }

    /// Stops the thread, fails the transfers still pending and closes every connection, then
    /// returns once all of that is done. Calls after the first return at once.
    func shutdown() {
        let thread: pthread_t? = inbox.withLock { inbox in
            guard inbox.phase == .running else { return nil }
            inbox.phase = .stopping
            curl_multi_wakeup(multi)
            return inbox.thread
        }
        guard let thread else { return }
        if pthread_equal(thread, pthread_self()) != 0 {
            pthread_detach(thread)
        } else {
            pthread_join(thread, nil)
        }
    }

    // MARK: The loop thread

    private func run() {
        var active: [OpaquePointer: CurlEasyTransfer] = [:]
        while true {
            let (submitted, cancelled, stopping) = inbox.withLock { inbox in
                defer {
                    inbox.submitted.removeAll()
                    inbox.cancelled.removeAll()
                    if inbox.phase == .stopping { inbox.phase = .stopped }
                }
                return (inbox.submitted, inbox.cancelled, inbox.phase != .running)
            }
            if stopping {
                for transfer in submitted {
                    transfer.finish(.failure(Self.shutDownError))
                }
                break
            }
            for transfer in submitted {
                if transfer.isCancellationRequested {
                    transfer.finish(.failure(Self.cancelledError))
                } else if curl_multi_add_handle(multi, transfer.easy) == CURLM_OK {
                    active[transfer.easy] = transfer
                } else {
                    transfer.finish(.failure(TransportError(kind: .other, message: "libcurl refused to start the transfer")))
                }
            }
            for transfer in cancelled where active.removeValue(forKey: transfer.easy) != nil {
                curl_multi_remove_handle(multi, transfer.easy)
                transfer.finish(.failure(Self.cancelledError))
            }

            var running: Int32 = 0
            let performed = curl_multi_perform(multi, &running)
            if performed != CURLM_OK {
                logger.error("curl_multi_perform failed: \(String(cString: curl_multi_strerror(performed)))")
            }
            collectFinishedTransfers(&active)

            // libcurl shortens the wait to its own next timeout while transfers are running;
            // the upper bound only matters when idle, and wakeups end it early.
            let polled = curl_multi_poll(multi, nil, 0, 60_000, nil)
            if polled != CURLM_OK {
                logger.error("curl_multi_poll failed: \(String(cString: curl_multi_strerror(polled)))")
            }
        }
        for (easy, transfer) in active {
            curl_multi_remove_handle(multi, easy)
            transfer.finish(.failure(Self.shutDownError))
        }
        // Closes the idle keep-alive connections too.
        curl_multi_cleanup(multi)
    }

    private func collectFinishedTransfers(_ active: inout [OpaquePointer: CurlEasyTransfer]) {
        var remaining: Int32 = 0
        while let message = curl_multi_info_read(multi, &remaining) {
            guard message.pointee.msg == CURLMSG_DONE,
                  let easy = message.pointee.easy_handle,
                  let transfer = active.removeValue(forKey: easy)
            else { continue }
            // Read before removing the handle: that invalidates the message.
            let code = message.pointee.data.result
            curl_multi_remove_handle(multi, easy)
            transfer.finish(transfer.outcome(of: code))
        }
    }

    private static let cancelledError = TransportError(kind: .cancelled, message: "the request was cancelled before an answer arrived")
    private static let shutDownError = TransportError(kind: .cancelled, message: "the transport was shut down before an answer arrived")
}

/// `curl_global_init` must run once, before any other libcurl call; a static `let` is
/// initialized exactly once even when several transports start at the same time.
enum CurlGlobal {
    private static let result: CURLcode = curl_global_init(Int(CURL_GLOBAL_ALL))

    static func initialize() throws(TransportError) {
        guard result == CURLE_OK else {
            throw TransportError(setup: "curl_global_init", code: result)
        }
    }
}
