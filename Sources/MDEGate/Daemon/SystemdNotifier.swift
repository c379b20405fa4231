import Foundation
import Glibc
import Logging
import MDEGateCore
import MDEGateWire
import ServiceLifecycle

/// Tells systemd what the daemon is doing, in sd_notify's protocol: `KEY=VALUE` lines in one
/// datagram to the socket named by `$NOTIFY_SOCKET`. Written here because no Swift package wraps
/// libsystemd on Debian 12, and the protocol is one `sendto`.
///
/// Without `NOTIFY_SOCKET` (not started by systemd as `Type=notify`) every message is dropped, so
/// callers need not ask first.
public struct SystemdNotifier: Sendable {
    /// Where messages go: a socket path, or an abstract socket name after a leading `@`.
    public let socketAddress: String?
    /// How often systemd wants `WATCHDOG=1`: half of `$WATCHDOG_USEC`, the margin sd_watchdog_enabled
    /// recommends. Nil when the watchdog is off, or when `$WATCHDOG_PID` names another process.
    public let watchdogInterval: Duration?
    private let logger: Logger

    public init(
        environment: [String: String] = ProcessInfo.processInfo.environment,
        processID: pid_t = getpid(),
        logger: Logger
    ) {
        let address = environment["NOTIFY_SOCKET"] ?? ""
        socketAddress = address.isEmpty ? nil : address
        let watchdogMicroseconds = environment["WATCHDOG_USEC"].flatMap { Int64($0) } ?? 0
        let watchdogOwner = environment["WATCHDOG_PID"].flatMap { pid_t($0) }
        if socketAddress != nil, watchdogMicroseconds > 0, watchdogOwner == nil || watchdogOwner == processID {
            watchdogInterval = .microseconds(watchdogMicroseconds / 2)
        } else {
            watchdogInterval = nil
        }
        self.logger = logger
    }

    public var isEnabled: Bool { socketAddress != nil }

    /// The daemon serves: systemd marks a `Type=notify` unit started only now, so units ordered
    /// after it (and `systemctl start`) wait for a socket that answers.
    public func ready(status: String) {
        send(["READY=1", "STATUS=\(Self.oneLine(status))"])
    }

    /// The free-text line `systemctl status` shows.
    public func status(_ text: String) {
        send(["STATUS=\(Self.oneLine(text))"])
    }

    /// Proves liveness; without it for `WatchdogSec=`, systemd kills and restarts the daemon.
    public func watchdog() {
        send(["WATCHDOG=1"])
    }

    /// Shutdown has begun: systemd shows the unit as deactivating while attempts in flight finish.
    public func stopping() {
        send(["STOPPING=1", "STATUS=stopping: no new connections; finishing answers in progress"])
    }

    /// Runs `reload` between `RELOADING=1` and `READY=1`, so `systemctl reload` returns only once
    /// the new configuration is in force. `READY=1` follows a failed reload too: the old
    /// configuration stays and the daemon still serves. `MONOTONIC_USEC=` is what systemd 253+
    /// requires with `RELOADING=1`; 252 ignores it.
    public func reloading<T>(
        status: @Sendable () async -> String,
        _ reload: () async throws -> T
    ) async rethrows -> T {
        var now = timespec()
        clock_gettime(CLOCK_MONOTONIC, &now)
        let microseconds = Int64(now.tv_sec) * 1_000_000 + Int64(now.tv_nsec) / 1000
        send(["RELOADING=1", "MONOTONIC_USEC=\(microseconds)", "STATUS=reloading the configuration"])
        do {
            let result = try await reload()
            ready(status: await status())
            return result
        } catch {
            ready(status: await status())
            throw error
        }
    }

    /// Sends `assignments` as one datagram. A failure is logged, never thrown: systemd missing a
    /// status line must not stop the daemon (a missed `WATCHDOG=1` has its own consequence).
    @discardableResult
    public func send(_ assignments: [String]) -> Bool {
        guard let socketAddress else { return true }
        let message = assignments.joined(separator: "\n")
        if let error = Self.sendDatagram(message, to: socketAddress) {
            logger.warning(
                "cannot notify systemd",
                metadata: ["NOTIFY_SOCKET": "\(socketAddress)", "message": "\(assignments.first ?? "")", "error": "\(error)"])
            return false
        }
        return true
    }

    /// A `STATUS=` value ends at the first newline.
    private static func oneLine(_ text: String) -> String {
        text.replacingOccurrences(of: "\n", with: " ")
    }

    /// Sends `message` to the datagram socket `address`; returns what went wrong, or nil.
    private static func sendDatagram(_ message: String, to address: String) -> String? {
        var path = Array(address.utf8)
        // An abstract socket: a leading NUL instead of the `@`, and no terminating NUL.
        let isAbstract = path.first == UInt8(ascii: "@")
        if isAbstract { path[0] = 0 }
        var socketAddress = sockaddr_un()
        socketAddress.sun_family = sa_family_t(AF_UNIX)
        let capacity = MemoryLayout.size(ofValue: socketAddress.sun_path)
        guard path.count < capacity || (isAbstract && path.count == capacity) else {
            return "NOTIFY_SOCKET is longer than a Unix socket address (\(capacity) bytes)"
        }
        withUnsafeMutableBytes(of: &socketAddress.sun_path) { $0.copyBytes(from: path) }
        let length = socklen_t(MemoryLayout<sa_family_t>.size + path.count + (isAbstract ? 0 : 1))

        let descriptor = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard descriptor >= 0 else { return "socket: \(String(cString: strerror(errno)))" }
        defer { close(descriptor) }
        let bytes = Array(message.utf8)
        let sent = bytes.withUnsafeBytes { buffer in
            withUnsafePointer(to: &socketAddress) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    sendto(descriptor, buffer.baseAddress, buffer.count, Int32(MSG_NOSIGNAL), $0, length)
                }
            }
        }
        guard sent >= 0 else { return "sendto: \(String(cString: strerror(errno)))" }
        return nil
    }
}

/// Keeps systemd's view of the running daemon current: `WATCHDOG=1` at the interval systemd asked
/// for, and `STATUS=` (queue depth and quota use) when it changed, checked every few seconds.
///
/// Each ping follows an answer from the gateway actor, so a gateway that stops answering stops the
/// pings, and systemd restarts the daemon (`WatchdogSec=`); the queue and ledger survive that.
public struct SystemdHeartbeat: Service {
    let notifier: SystemdNotifier
    let gateway: Gateway
    let statusInterval: Duration

    public init(notifier: SystemdNotifier, gateway: Gateway, statusInterval: Duration = .seconds(2)) {
        self.notifier = notifier
        self.gateway = gateway
        self.statusInterval = statusInterval
    }

    public func run() async {
        await cancelWhenGracefulShutdown {
            await self.beat()
        }
    }

    private func beat() async {
        let interval = min(statusInterval, notifier.watchdogInterval ?? statusInterval)
        var lastStatus: String?
        while true {
            do {
                try await Task.sleep(for: interval)
            } catch {
                return
            }
            let status = await gateway.status().systemdStatus
            var assignments: [String] = []
            if notifier.watchdogInterval != nil { assignments.append("WATCHDOG=1") }
            if status != lastStatus { assignments.append("STATUS=\(status)") }
            lastStatus = status
            if !assignments.isEmpty { notifier.send(assignments) }
        }
    }
}

extension StatusDocument {
    /// One line for `systemctl status`: queue, attempts in flight, how much of each limit is
    /// spent, and pauses, e.g. `queue 12 (3 clients), 2 in flight, quota used 37 of 100/1m, 120 of
    /// 1500/1h; isolate 5 of 100/1m, 5 of 1500/1h; run_antivirus_scan paused after a 429 until …`.
    /// `cancel`'s use always shows; other APIs only once they spent something.
    public var systemdStatus: String {
        let clients = queue.clients.count == 1 ? "1 client" : "\(queue.clients.count) clients"
        func used(_ limits: [LimitState]) -> String { limits.map { "\($0.used) of \($0.spec)" }.joined(separator: ", ") }
        var line = "queue \(queue.depth) (\(clients)), \(inFlight) in flight, quota used \(used(limits))"
        for api in apis where api.name != UpstreamAPI.cancel.name && api.limits.contains(where: { $0.used > 0 }) {
            line += "; \(api.name) \(used(api.limits))"
        }
        for api in apis {
            if let pausedUntil = api.pausedUntil { line += "; \(api.name) paused after a 429 until \(pausedUntil)" }
        }
        if let shared = sharedQuota, !shared.reachable {
            line += "; shared quota database unavailable, nothing is sent"
        }
        return line
    }
}
