import CCurl
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
    typealias Outcome = Result<HTTPResponse, TransportError>

    let easy: OpaquePointer

    private let method: String
    private let url: String
    private let requestBody: [UInt8]
    private var requestBodyOffset = 0
    private var headerList: UnsafeMutablePointer<curl_slist>?
    private let errorBuffer: UnsafeMutablePointer<CChar>
    private let settings: TransferSettings

    private var responseHeaders: [(name: String, value: String)] = []
    private var responseHeadersComplete = false
    private var responseBody: [UInt8] = []
    private var responseBodyTooLarge = false

    /// How many times libcurl was about to put this request on the wire (see `shouldStartRequest`).
    private var requestStarts = 0
    private var refusedResend = false

    private let cancellationRequested = Atomic<Bool>(false)
    private var completion: (@Sendable (Outcome) -> Void)?
    private var cleanedUp = false

    init(request: HTTPRequest, settings: TransferSettings) throws(TransportError) {
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
            return .success(HTTPResponse(status: status, headers: responseHeaders, body: responseBody))
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

    private func elapsedMicroseconds() -> Int64 {
        var total: curl_off_t = 0
        _ = mdegate_curl_easy_getinfo_off_t(easy, CURLINFO_TOTAL_TIME_T, &total)
        return Int64(total)
    }

    // MARK: Configuration

    private static func validate(_ request: HTTPRequest) throws(TransportError) {
        let tokenBytes = request.method.utf8
        guard !tokenBytes.isEmpty, tokenBytes.allSatisfy(isTokenCharacter) else {
            throw TransportError(kind: .other, message: "'\(request.method)' is not an HTTP method")
        }
        if request.method == "HEAD" || request.method == "GET", !request.body.isEmpty {
            throw TransportError(kind: .other, message: "a \(request.method) request cannot carry a body")
        }
        guard !request.url.utf8.contains(where: { $0 < 0x21 || $0 == 0x7F }) else {
            throw TransportError(kind: .other, message: "the URL contains spaces or control characters")
        }
        for header in request.headers {
            // A CR or LF would let a value start a header (or a request) of its own.
            guard !header.name.isEmpty, header.name.utf8.allSatisfy(isTokenCharacter) else {
                throw TransportError(kind: .other, message: "'\(header.name)' is not a valid header name")
            }
            guard !header.value.utf8.contains(where: { $0 == 0x0D || $0 == 0x0A || $0 == 0 }) else {
                throw TransportError(kind: .other, message: "the value of header '\(header.name)' contains CR, LF or NUL")
            }
        }
    }

    private func configure(_ request: HTTPRequest) throws(TransportError) {
        let context = Unmanaged.passUnretained(self).toOpaque()

        try set(CURLOPT_URL, request.url)
        // The request must never switch to another protocol (file://, a redirect to ftp://...).
        try set(CURLOPT_PROTOCOLS_STR, "http,https")
        // Signals must not be used for DNS timeouts in a multi-threaded process.
        try set(CURLOPT_NOSIGNAL, 1)
        try set(CURLOPT_CONNECTTIMEOUT_MS, settings.connectTimeoutMilliseconds)
        try set(CURLOPT_TIMEOUT_MS, settings.requestTimeoutMilliseconds)
        try set(CURLOPT_TCP_KEEPALIVE, 1)
        try set(CURLOPT_HTTP_VERSION, CURL_HTTP_VERSION_2TLS)
        // No CURLOPT_PIPEWAIT: it would hold a request until an earlier one on the same host
        // answered (to learn whether the connection multiplexes). The ledger recorded the
        // attempt when it was dispatched; it must leave now, not one round trip later.
        try check("set CURLOPT_ERRORBUFFER", mdegate_curl_easy_setopt_pointer(easy, CURLOPT_ERRORBUFFER, errorBuffer))

        // Peer and host verification are always on; nothing in the configuration can turn them off.
        try set(CURLOPT_SSL_VERIFYPEER, 1)
        try set(CURLOPT_SSL_VERIFYHOST, 2)
        try set(CURLOPT_PROXY_SSL_VERIFYPEER, 1)
        try set(CURLOPT_PROXY_SSL_VERIFYHOST, 2)
        if let certificates = settings.trustedCertificates {
            try check("set CURLOPT_CAINFO_BLOB", certificates.apply(to: easy, option: CURLOPT_CAINFO_BLOB))
            try check("set CURLOPT_PROXY_CAINFO_BLOB", certificates.apply(to: easy, option: CURLOPT_PROXY_CAINFO_BLOB))
        }

        // An empty proxy disables the proxy, including http_proxy/https_proxy from the
        // environment: the configuration is the only place that decides where requests go.
        try set(CURLOPT_PROXY, settings.unixSocketPath == nil ? settings.proxy ?? "" : "")
        try set(CURLOPT_SUPPRESS_CONNECT_HEADERS, 1)
        if let path = settings.unixSocketPath {
            try set(CURLOPT_UNIX_SOCKET_PATH, path)
        }

        try configureMethodAndBody(request, context: context)
        try configureRequestHeaders(request)

        try check("set CURLOPT_PREREQFUNCTION", mdegate_curl_easy_setopt_prereq_callback(easy, CURLOPT_PREREQFUNCTION) { context, _, _, _, _ in
            Unmanaged<CurlEasyTransfer>.fromOpaque(context!).takeUnretainedValue().shouldStartRequest()
                ? CURL_PREREQFUNC_OK : CURL_PREREQFUNC_ABORT
        })
        try check("set CURLOPT_PREREQDATA", mdegate_curl_easy_setopt_pointer(easy, CURLOPT_PREREQDATA, context))

        try check("set CURLOPT_HEADERFUNCTION", mdegate_curl_easy_setopt_write_callback(easy, CURLOPT_HEADERFUNCTION) { bytes, size, count, context in
            let line = UnsafeRawBufferPointer(start: bytes, count: size * count)
            Unmanaged<CurlEasyTransfer>.fromOpaque(context!).takeUnretainedValue().receiveHeaderLine(line)
            return size * count
        })
        try check("set CURLOPT_HEADERDATA", mdegate_curl_easy_setopt_pointer(easy, CURLOPT_HEADERDATA, context))
        try check("set CURLOPT_WRITEFUNCTION", mdegate_curl_easy_setopt_write_callback(easy, CURLOPT_WRITEFUNCTION) { bytes, size, count, context in
            let chunk = UnsafeRawBufferPointer(start: bytes, count: size * count)
            return Unmanaged<CurlEasyTransfer>.fromOpaque(context!).takeUnretainedValue().receiveBody(chunk)
        })
        try check("set CURLOPT_WRITEDATA", mdegate_curl_easy_setopt_pointer(easy, CURLOPT_WRITEDATA, context))

        if settings.logger.logLevel <= .trace {
            try set(CURLOPT_VERBOSE, 1)
            try check("set CURLOPT_DEBUGFUNCTION", mdegate_curl_easy_setopt_debug_callback(easy, CURLOPT_DEBUGFUNCTION) { _, type, text, size, context in
                Unmanaged<CurlEasyTransfer>.fromOpaque(context!).takeUnretainedValue().trace(type, UnsafeRawBufferPointer(start: text, count: size))
                return 0
            })
            try check("set CURLOPT_DEBUGDATA", mdegate_curl_easy_setopt_pointer(easy, CURLOPT_DEBUGDATA, context))
        }
    }

    private func configureMethodAndBody(_ request: HTTPRequest, context: UnsafeMutableRawPointer) throws(TransportError) {
        switch request.method {
        case "GET":
            try set(CURLOPT_HTTPGET, 1)
        case "HEAD":
            try set(CURLOPT_NOBODY, 1)
        case "POST", "PUT", "PATCH":
            try configureBody()
            if request.method != "POST" {
                try set(CURLOPT_CUSTOMREQUEST, request.method)
            }
        default:
            if !request.body.isEmpty {
                try configureBody()
            }
            try set(CURLOPT_CUSTOMREQUEST, request.method)
        }

        func configureBody() throws(TransportError) {
            // The body goes through a read callback rather than CURLOPT_POSTFIELDS, and the
            // seek callback refuses to rewind: if libcurl ever wanted to send this request a
            // second time (a dead keep-alive connection), it must rewind the body first, and
            // failing that fails the transfer (CURLE_SEND_FAIL_REWIND) instead of resending.
            try set(CURLOPT_POST, 1)
            try check("set CURLOPT_POSTFIELDSIZE_LARGE", mdegate_curl_easy_setopt_off_t(easy, CURLOPT_POSTFIELDSIZE_LARGE, curl_off_t(request.body.count)))
            try check("set CURLOPT_READFUNCTION", mdegate_curl_easy_setopt_read_callback(easy, CURLOPT_READFUNCTION) { buffer, size, count, context in
                let destination = UnsafeMutableRawBufferPointer(start: buffer, count: size * count)
                return Unmanaged<CurlEasyTransfer>.fromOpaque(context!).takeUnretainedValue().fillRequestBody(destination)
            })
            try check("set CURLOPT_READDATA", mdegate_curl_easy_setopt_pointer(easy, CURLOPT_READDATA, context))
            try check("set CURLOPT_SEEKFUNCTION", mdegate_curl_easy_setopt_seek_callback(easy, CURLOPT_SEEKFUNCTION) { context, _, _ in
                Unmanaged<CurlEasyTransfer>.fromOpaque(context!).takeUnretainedValue().refuseRewind()
            })
            try check("set CURLOPT_SEEKDATA", mdegate_curl_easy_setopt_pointer(easy, CURLOPT_SEEKDATA, context))
        }
    }

    private func configureRequestHeaders(_ request: HTTPRequest) throws(TransportError) {
        var lines: [String] = []
        for header in request.headers {
            // "Name:" would tell libcurl to remove its own header; "Name;" sends an empty value.
            lines.append(header.value.isEmpty ? "\(header.name);" : "\(header.name): \(header.value)")
        }
        let names = request.headers.map(\.name)
        func has(_ name: String) -> Bool { names.contains { asciiCaseInsensitiveEquals($0, name) } }
        // Waiting for "100 Continue" would add a round trip to every larger request.
        if !has("Expect") {
            lines.append("Expect:")
        }
        // libcurl would label a POST body as a form; send only what the caller chose.
        if !has("Content-Type") {
            lines.append("Content-Type:")
        }
        for line in lines {
            guard let extended = curl_slist_append(headerList, line) else {
                throw TransportError(kind: .other, message: "libcurl could not store a request header (out of memory?)")
            }
            headerList = extended
        }
        try check("set CURLOPT_HTTPHEADER", mdegate_curl_easy_setopt_slist(easy, CURLOPT_HTTPHEADER, headerList))
    }

    private func set(_ option: CURLoption, _ value: Int) throws(TransportError) {
        try check("set libcurl option \(option.rawValue)", mdegate_curl_easy_setopt_long(easy, option, value))
    }

    private func set(_ option: CURLoption, _ value: String) throws(TransportError) {
        // libcurl copies string options (only CURLOPT_POSTFIELDS is not copied, and it is not used).
        try check("set libcurl option \(option.rawValue)", mdegate_curl_easy_setopt_string(easy, option, value))
    }

    private func check(_ step: String, _ code: CURLcode) throws(TransportError) {
        guard code == CURLE_OK else { throw TransportError(setup: step, code: code) }
    }

    // MARK: Callbacks (on the loop thread, inside curl_multi_perform)

    /// libcurl calls this each time it is about to send the request: once for a normal
    /// transfer, and again when it decided on its own to resend the request on a fresh
    /// connection because a reused keep-alive connection died before answering ("Connection
    /// died, retrying a fresh connect"). That resend would reach the server a second time
    /// without an entry in the quota ledger, so it is refused; the caller gets a connection
    /// error and decides whether to make a new, recorded attempt. Redirects, which would also
    /// call this again, are never followed.
    private func shouldStartRequest() -> Bool {
        requestStarts += 1
        if requestStarts > 1 {
            refusedResend = true
            return false
        }
        return true
    }

    /// libcurl rewinds the body only to send it again, which is the resend refused above; this
    /// catches it even where libcurl rewinds before it would ask `shouldStartRequest`.
    private func refuseRewind() -> Int32 {
        refusedResend = true
        return CURL_SEEKFUNC_FAIL
    }

    private func fillRequestBody(_ destination: UnsafeMutableRawBufferPointer) -> Int {
        let count = min(destination.count, requestBody.count - requestBodyOffset)
        guard count > 0 else { return 0 }
        requestBody.withUnsafeBytes { source in
            destination.copyMemory(from: UnsafeRawBufferPointer(rebasing: source[requestBodyOffset..<(requestBodyOffset + count)]))
        }
        requestBodyOffset += count
        return count
    }

    /// Keeps the headers of the last response only: a new status line (after `100 Continue`,
    /// for example) starts over, and trailers after the blank line are ignored.
    private func receiveHeaderLine(_ raw: UnsafeRawBufferPointer) {
        var bytes = raw[...]
        while let last = bytes.last, last == UInt8(ascii: "\r") || last == UInt8(ascii: "\n") {
            bytes = bytes.dropLast()
        }
        if bytes.starts(with: "HTTP/".utf8) {
            responseHeaders.removeAll()
            responseHeadersComplete = false
            return
        }
        guard !responseHeadersComplete else { return }
        if bytes.isEmpty {
            responseHeadersComplete = true
            return
        }
        if let first = bytes.first, first == UInt8(ascii: " ") || first == UInt8(ascii: "\t") {
            // An obsolete folded continuation of the previous header's value.
            guard !responseHeaders.isEmpty else { return }
            responseHeaders[responseHeaders.count - 1].value += " " + trimmed(bytes)
            return
        }
        guard let colon = bytes.firstIndex(of: UInt8(ascii: ":")) else { return }
        let name = String(decoding: bytes[..<colon], as: UTF8.self)
        let value = trimmed(bytes[(colon + 1)...])
        responseHeaders.append((name: name, value: value))
    }

    private func receiveBody(_ chunk: UnsafeRawBufferPointer) -> Int {
        guard responseBody.count + chunk.count <= settings.maxResponseBytes else {
            responseBodyTooLarge = true
            return 0  // anything but chunk.count makes libcurl stop with CURLE_WRITE_ERROR
        }
        responseBody.append(contentsOf: chunk)
        return chunk.count
    }

    /// libcurl's own narration at trace level. Only its informational text is logged: the data
    /// and header events carry the request headers, which include the bearer token.
    private func trace(_ type: curl_infotype, _ text: UnsafeRawBufferPointer) {
        guard type == CURLINFO_TEXT else { return }
        var bytes = text[...]
        while let last = bytes.last, last == UInt8(ascii: "\n") || last == UInt8(ascii: "\r") {
            bytes = bytes.dropLast()
        }
        settings.logger.trace("libcurl: \(String(decoding: bytes, as: UTF8.self))", metadata: ["url": "\(url)"])
    }
}

private func isTokenCharacter(_ byte: UInt8) -> Bool {
    switch byte {
    case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "0")...UInt8(ascii: "9"):
        true
    default:
        "!#$%&'*+-.^_`|~".utf8.contains(byte)
    }
}

private func trimmed(_ bytes: Slice<UnsafeRawBufferPointer>) -> String {
    var slice = bytes
    while let first = slice.first, first == UInt8(ascii: " ") || first == UInt8(ascii: "\t") {
        slice = slice.dropFirst()
    }
    while let last = slice.last, last == UInt8(ascii: " ") || last == UInt8(ascii: "\t") {
        slice = slice.dropLast()
    }
    return String(decoding: slice, as: UTF8.self)
}
