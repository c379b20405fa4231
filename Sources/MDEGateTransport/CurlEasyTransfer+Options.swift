import CCurl
import HTTPTypes
import Logging

/// Configuration: the request checked, then every libcurl option set on the easy handle.
extension CurlEasyTransfer {
    static func validate(_ request: TransportRequest) throws(TransportError) {
        guard HTTPTypes.HTTPRequest.Method(request.method) != nil else {
            throw TransportError(kind: .other, message: "'\(request.method)' is not an HTTP method")
        }
        if request.method == "HEAD" || request.method == "GET", !request.body.isEmpty {
            throw TransportError(kind: .other, message: "a \(request.method) request cannot carry a body")
        }
        guard !request.url.utf8.contains(where: { $0 < 0x21 || $0 == 0x7F }) else {
            throw TransportError(kind: .other, message: "the URL contains spaces or control characters")
        }
    }

    func configure(_ request: TransportRequest) throws(TransportError) {
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

    func configureMethodAndBody(_ request: TransportRequest, context: UnsafeMutableRawPointer) throws(TransportError) {
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

    func configureRequestHeaders(_ request: TransportRequest) throws(TransportError) {
        var lines: [String] = []
        for field in request.headers {
            // "Name:" would tell libcurl to remove its own header; "Name;" sends an empty value.
            lines.append(field.value.isEmpty ? "\(field.name.rawName);" : "\(field.name.rawName): \(field.value)")
        }
        // Waiting for "100 Continue" would add a round trip to every larger request.
        if request.headers[.expect] == nil {
            lines.append("Expect:")
        }
        // libcurl would label a POST body as a form; send only what the caller chose.
        if request.headers[.contentType] == nil {
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

    func set(_ option: CURLoption, _ value: Int) throws(TransportError) {
        try check("set libcurl option \(option.rawValue)", mdegate_curl_easy_setopt_long(easy, option, value))
    }

    func set(_ option: CURLoption, _ value: String) throws(TransportError) {
        // libcurl copies string options (only CURLOPT_POSTFIELDS is not copied, and it is not used).
        try check("set libcurl option \(option.rawValue)", mdegate_curl_easy_setopt_string(easy, option, value))
    }

    func check(_ step: String, _ code: CURLcode) throws(TransportError) {
        guard code == CURLE_OK else { throw TransportError(setup: step, code: code) }
    }
}
