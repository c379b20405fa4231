import CCurl
import HTTPTypes
import Logging
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The per-transfer settings derived once from `CurlTransport.Configuration`.
struct TransferSettings: Sendable {
    var connectTimeoutMilliseconds: Int
    var requestTimeoutMilliseconds: Int
    var maxResponseBytes: Int
    var proxy: String?
    var unixSocketPath: String?
    var trustedCertificates: TrustedCertificates?
    var logger: Logger
}

/// One request in flight: owns its libcurl easy handle and every buffer libcurl points into
/// (request headers, body, error text), so they live exactly as long as the transfer.
///
/// Thread confinement, which is why `@unchecked Sendable` is sound: the creating task configures
/// the handle, then hands the object to `CurlMultiLoop` through its mutex (a happens-before
/// edge); from then on only the loop thread touches the handle and the mutable fields, including
/// from libcurl's callbacks, which run inside `curl_multi_perform` on that thread. The one field
/// other threads touch is `cancellationRequested`, an atomic.
final class CurlEasyTransfer: @unchecked Sendable {
    typealias Outcome = Result<TransportResponse, TransportError>

    let easy: OpaquePointer

    let method: String
    let url: String
    let requestBody: [UInt8]
    var requestBodyOffset = 0
    var headerList: UnsafeMutablePointer<curl_slist>?
    let errorBuffer: UnsafeMutablePointer<CChar>
    let settings: TransferSettings

    var responseHeaders = HTTPFields()
    var responseHeadersComplete = false
    var responseBody: [UInt8] = []
    var responseBodyTooLarge = false

    /// How many times libcurl was about to put this request on the wire (see `shouldStartRequest`).
    var requestStarts = 0
    var refusedResend = false

    let cancellationRequested = Atomic<Bool>(false)
    var completion: (@Sendable (Outcome) -> Void)?
    var cleanedUp = false

    init(request: TransportRequest, settings: TransferSettings) throws(TransportError) {
        try Self.validate(request)
        guard let easy = curl_easy_init() else {
            throw TransportError(kind: .other, message: "libcurl could not create a transfer handle (out of memory?)")
        }
        self.easy = easy
        self.method = request.method
        self.url = request.url
        self.requestBody = request.body
        self.settings = settings
        errorBuffer = .allocate(capacity: Int(CURL_ERROR_SIZE))
        errorBuffer.initialize(repeating: 0, count: Int(CURL_ERROR_SIZE))
        try configure(request)
    }

    deinit {
        if !cleanedUp {
            curl_easy_cleanup(easy)
        }
        curl_slist_free_all(headerList)
        errorBuffer.deallocate()
    }

    // MARK: Hand-off between the calling task and the loop thread

    var isCancellationRequested: Bool {
        cancellationRequested.load(ordering: .acquiring)
    }

    func requestCancellation() {
        cancellationRequested.store(true, ordering: .releasing)
    }

    /// Set by the caller before the transfer is submitted.
    func onOutcome(_ completion: @escaping @Sendable (Outcome) -> Void) {
        self.completion = completion
    }

    /// Releases the easy handle (it must already be out of the multi handle) and hands the
    /// outcome to the caller. Called exactly once per transfer.
    func finish(_ outcome: Outcome) {
        curl_easy_cleanup(easy)
        cleanedUp = true
        let completion = self.completion
        self.completion = nil
        completion?(outcome)
    }

    /// Turns libcurl's verdict into the caller's answer, reading what the callbacks collected.
    func outcome(of code: CURLcode) -> Outcome {
        if code == CURLE_OK {
            var status = 0
            _ = mdegate_curl_easy_getinfo_long(easy, CURLINFO_RESPONSE_CODE, &status)
            settings.logger.debug("upstream answered", metadata: [
                "method": "\(method)", "url": "\(url)", "status": "\(status)",
                "elapsed_us": "\(elapsedMicroseconds())",
            ])
            return .success(TransportResponse(status: status, headers: responseHeaders, body: responseBody))
        }
        let error: TransportError
        if refusedResend {
            error = TransportError(
                kind: .connectionFailed,
                message: "the connection closed after the request was sent and before an answer arrived (a reused keep-alive connection had died); libcurl's automatic resend was refused so the request is never sent twice within one attempt"
            )
            settings.logger.notice("refused libcurl's automatic resend on a fresh connection", metadata: [
                "method": "\(method)", "url": "\(url)",
            ])
        } else if responseBodyTooLarge {
            error = TransportError(kind: .other, message: "the response body exceeds \(settings.maxResponseBytes) bytes")
        } else {
            error = TransportError(code: code, detail: String(cString: errorBuffer))
        }
        settings.logger.debug("transfer failed", metadata: [
            "method": "\(method)", "url": "\(url)", "error": "\(error)",
        ])
        return .failure(error)
    }

    func elapsedMicroseconds() -> Int64 {
        var total: curl_off_t = 0
        _ = mdegate_curl_easy_getinfo_off_t(easy, CURLINFO_TOTAL_TIME_T, &total)
        return Int64(total)
    }
}
