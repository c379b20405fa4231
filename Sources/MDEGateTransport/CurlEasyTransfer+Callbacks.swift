import CCurl
import HTTPTypes
import Logging

/// libcurl's callbacks: they run on the loop thread, inside `curl_multi_perform`.
extension CurlEasyTransfer {
    /// libcurl calls this each time it is about to send the request: once for a normal
    /// transfer, and again when it decided on its own to resend the request on a fresh
    /// connection because a reused keep-alive connection died before answering ("Connection
    /// died, retrying a fresh connect"). That resend would reach the server a second time
    /// without an entry in the quota ledger, so it is refused; the caller gets a connection
    /// error and decides whether to make a new, recorded attempt. Redirects, which would also
    /// call this again, are never followed.
    func shouldStartRequest() -> Bool {
        requestStarts += 1
        if requestStarts > 1 {
            refusedResend = true
            return false
        }
        return true
    }

    /// libcurl rewinds the body only to send it again, which is the resend refused above; this
    /// catches it even where libcurl rewinds before it would ask `shouldStartRequest`.
    func refuseRewind() -> Int32 {
        refusedResend = true
        return CURL_SEEKFUNC_FAIL
    }

    func fillRequestBody(_ destination: UnsafeMutableRawBufferPointer) -> Int {
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
    func receiveHeaderLine(_ raw: UnsafeRawBufferPointer) {
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
            guard let last = responseHeaders.indices.last else { return }
            responseHeaders[last].value += " " + trimmed(bytes)
            return
        }
        guard let colon = bytes.firstIndex(of: UInt8(ascii: ":")),
            let name = HTTPField.Name(String(decoding: bytes[..<colon], as: UTF8.self))
        else { return }
        responseHeaders.append(HTTPField(name: name, value: trimmed(bytes[(colon + 1)...])))
    }

    func receiveBody(_ chunk: UnsafeRawBufferPointer) -> Int {
        guard responseBody.count + chunk.count <= settings.maxResponseBytes else {
            responseBodyTooLarge = true
            return 0  // anything but chunk.count makes libcurl stop with CURLE_WRITE_ERROR
        }
        responseBody.append(contentsOf: chunk)
        return chunk.count
    }

    /// libcurl's own narration at trace level. Only its informational text is logged: the data
    /// and header events carry the request headers, which include the bearer token.
    func trace(_ type: curl_infotype, _ text: UnsafeRawBufferPointer) {
        guard type == CURLINFO_TEXT else { return }
        var bytes = text[...]
        while let last = bytes.last, last == UInt8(ascii: "\n") || last == UInt8(ascii: "\r") {
            bytes = bytes.dropLast()
        }
        settings.logger.trace("libcurl: \(String(decoding: bytes, as: UTF8.self))", metadata: ["url": "\(url)"])
    }}

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
