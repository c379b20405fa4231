import CCurl
import Logging

/// Sends HTTP requests through libcurl without blocking the caller's thread.
///
/// One transport is one connection pool: requests share keep-alive connections (and HTTP/2
/// streams where the server offers HTTP/2 over TLS), so keep one per destination and
/// configuration, and build a new one when the configuration changes.
///
/// Each `send` is exactly one request on the wire. libcurl normally resends a request by itself
/// when a reused keep-alive connection turns out dead; that resend would spend upstream quota the
/// gateway never recorded, so this transport refuses it and reports `.connectionFailed` instead.
public final class CurlTransport: Sendable {
    /// Settings fixed for the transport's lifetime.
    public struct Configuration: Sendable {
        /// Time allowed to establish a connection, including TLS and a proxy tunnel.
        public var connectTimeout: Duration
        /// Time allowed for the whole request, from the moment it is sent to `send` (including
        /// waiting for a free connection) to the last byte of the response.
        public var requestTimeout: Duration
        /// At most this many connections to one host; further requests wait for one (or share
        /// an HTTP/2 connection).
        public var maxConcurrency: Int
        /// A PEM file of CA certificates trusted in addition to the system's, e.g. a company CA.
        /// Certificate and host name checks stay on in every configuration.
        public var caFile: String?
        /// An HTTP proxy URL such as `http://proxy.example:3128`; https upstreams go through it
        /// with CONNECT. Nil means direct, and `http_proxy`-style environment variables are
        /// ignored so that the configuration alone decides.
        public var proxy: String?
        /// Talk to this Unix socket instead of the URL's host, for the gateway's local API.
        public var unixSocketPath: String?
        /// A larger response body fails the transfer instead of growing memory without bound.
        public var maxResponseBytes: Int

        public init(
            connectTimeout: Duration = .seconds(10),
            requestTimeout: Duration = .seconds(30),
            maxConcurrency: Int = 8,
            caFile: String? = nil,
            proxy: String? = nil,
            unixSocketPath: String? = nil,
            maxResponseBytes: Int = 16 * 1024 * 1024
        ) {
            self.connectTimeout = connectTimeout
            self.requestTimeout = requestTimeout
            self.maxConcurrency = maxConcurrency
            self.caFile = caFile
            self.proxy = proxy
            self.unixSocketPath = unixSocketPath
            self.maxResponseBytes = maxResponseBytes
        }
    }

    public let configuration: Configuration
    private let settings: TransferSettings
    private let loop: CurlMultiLoop

    /// Starts the transport's thread. Throws when the configuration cannot work (for example an
    /// unreadable `caFile`), so a bad reload is refused instead of failing every request later.
    public init(configuration: Configuration = Configuration(), logger: Logger = Logger(label: "mdegate.transport")) throws(TransportError) {
        let connectTimeout = try Self.milliseconds(configuration.connectTimeout, name: "connect timeout")
        let requestTimeout = try Self.milliseconds(configuration.requestTimeout, name: "request timeout")
        guard configuration.maxConcurrency >= 1 else {
            throw TransportError(kind: .other, message: "max concurrency must be at least 1, not \(configuration.maxConcurrency)")
        }
        guard configuration.maxResponseBytes >= 0 else {
            throw TransportError(kind: .other, message: "the response size limit must not be negative")
        }
        if let path = configuration.unixSocketPath, path.isEmpty || path.utf8.count > 107 {
            throw TransportError(kind: .other, message: "the Unix socket path '\(path)' must be 1 to 107 bytes long")
        }
        try CurlGlobal.initialize()
        let caFile = configuration.caFile.flatMap { $0.isEmpty ? nil : $0 }
        let trusted = try caFile.map { path throws(TransportError) in try TrustedCertificates(addingCAFile: path) }
        if let caFile, let trusted {
            if let bundle = trusted.systemBundlePath {
                logger.debug("trusting an extra CA file", metadata: ["ca_file": "\(caFile)", "system_bundle": "\(bundle)"])
            } else {
                logger.warning("no system CA bundle found: only the CA file and the system CA directory are trusted", metadata: ["ca_file": "\(caFile)"])
            }
        }

        self.configuration = configuration
        settings = TransferSettings(
            connectTimeoutMilliseconds: connectTimeout,
            requestTimeoutMilliseconds: requestTimeout,
            maxResponseBytes: configuration.maxResponseBytes,
            proxy: configuration.proxy.flatMap { $0.isEmpty ? nil : $0 },
            unixSocketPath: configuration.unixSocketPath,
            trustedCertificates: trusted,
            logger: logger
        )
        loop = try CurlMultiLoop(maxHostConnections: configuration.maxConcurrency, logger: logger)
    }

    deinit {
        loop.shutdown()
    }

    /// Sends one request and returns the final response, whatever its status. Throws only when
    /// there is no response: see `TransportError.Kind`. Cancelling the calling task aborts the
    /// transfer (`.cancelled`).
    nonisolated(nonsending) public func send(_ request: TransportRequest) async throws(TransportError) -> TransportResponse {
        let transfer = try CurlEasyTransfer(request: request, settings: settings)
        let loop = self.loop
        let outcome = await withTaskCancellationHandler {
            await withCheckedContinuation { continuation in
                start(transfer) { continuation.resume(returning: $0) }
            }
        } onCancel: {
            loop.cancel(transfer)
        }
        return try outcome.get()
    }

    /// Sends one request and hands its outcome to `completion`, once, on the transport's thread
    /// (or on the caller's, when the request is refused before it starts). For callers that live
    /// on an event loop of their own: no task is created and no executor is entered on the way.
    ///
    /// The transfer holds the transport until it is done, as the `async` form's caller does: a
    /// transport a reload replaced finishes its transfers before its thread stops.
    public func send(_ request: TransportRequest, completion: @escaping @Sendable (Result<TransportResponse, TransportError>) -> Void) {
        do {
            start(try CurlEasyTransfer(request: request, settings: settings)) { outcome in
                withExtendedLifetime(self) { completion(outcome) }
            }
        } catch {
            completion(.failure(error))
        }
    }

    private func start(_ transfer: CurlEasyTransfer, completion: @escaping @Sendable (Result<TransportResponse, TransportError>) -> Void) {
        transfer.onOutcome(completion)
        if !loop.submit(transfer) {
            transfer.finish(.failure(TransportError(kind: .cancelled, message: "the transport is shut down")))
        }
    }

    /// Stops the transport's thread: pending requests fail with `.cancelled` and connections
    /// close. Blocks until that is done. Safe to call more than once; `deinit` calls it too, but
    /// an owner that wants a bounded, orderly stop (SIGTERM, reload) calls it itself.
    public func shutdown() {
        loop.shutdown()
    }

    /// libcurl takes whole milliseconds, and 0 would mean "no timeout".
    private static func milliseconds(_ duration: Duration, name: String) throws(TransportError) -> Int {
        guard duration > .zero else {
            throw TransportError(kind: .other, message: "the \(name) must be positive, not \(duration)")
        }
        let (seconds, attoseconds) = duration.components
        let roundedUp = attoseconds > 0 ? (attoseconds + 999_999_999_999_999) / 1_000_000_000_000_000 : 0
        let (total, overflow) = seconds.multipliedReportingOverflow(by: 1000)
        guard !overflow, total <= Int64(Int32.max) else {
            throw TransportError(kind: .other, message: "the \(name) \(duration) is too long")
        }
        return Int(total + roundedUp)
    }
}
