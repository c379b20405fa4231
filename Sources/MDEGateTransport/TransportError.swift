import CCurl

/// Why a transfer produced no HTTP response. The kind tells a caller what to do (retry a
/// timeout or a connection failure, report a certificate problem to the operator); the message
/// is libcurl's explanation for a person and never contains request headers.
public struct TransportError: Error, Sendable, CustomStringConvertible {
    public enum Kind: Sendable, Hashable {
        /// The connect timeout or the request timeout ran out.
        case timeout
        /// No connection, or the connection broke before a complete response arrived. The
        /// request may have reached the server.
        case connectionFailed
        /// The TLS handshake failed, most often because the server's certificate is not trusted
        /// or does not match its name. Retrying does not help.
        case tls
        /// The calling task was cancelled or the transport was shut down before an answer came.
        /// The request may have reached the server.
        case cancelled
        /// Anything else: an invalid request or configuration, or a libcurl failure.
        case other
    }

    public var kind: Kind
    public var message: String

    public init(kind: Kind, message: String) {
        self.kind = kind
        self.message = message
    }

    public var description: String {
        let label = switch kind {
        case .timeout: "timed out"
        case .connectionFailed: "connection failed"
        case .tls: "TLS failure"
        case .cancelled: "cancelled"
        case .other: "transport error"
        }
        return "\(label): \(message)"
    }
}

extension TransportError {
    /// Classifies a failed transfer; `detail` is the text libcurl left in the error buffer.
    init(code: CURLcode, detail: String) {
        let summary = String(cString: curl_easy_strerror(code))
        let text = detail.isEmpty ? summary : detail
        self.init(kind: Self.kind(of: code), message: "\(text) (libcurl error \(code.rawValue))")
    }

    /// Builds an error for a setup step that libcurl refused.
    init(setup step: String, code: CURLcode) {
        let summary = String(cString: curl_easy_strerror(code))
        self.init(kind: .other, message: "\(step): \(summary) (libcurl error \(code.rawValue))")
    }

    private static func kind(of code: CURLcode) -> Kind {
        switch code {
        case CURLE_OPERATION_TIMEDOUT:
            .timeout
        case CURLE_COULDNT_RESOLVE_HOST, CURLE_COULDNT_RESOLVE_PROXY, CURLE_COULDNT_CONNECT,
             CURLE_SEND_ERROR, CURLE_RECV_ERROR, CURLE_GOT_NOTHING, CURLE_PARTIAL_FILE,
             CURLE_HTTP2, CURLE_HTTP2_STREAM, CURLE_HTTP3, CURLE_QUIC_CONNECT_ERROR,
             CURLE_WEIRD_SERVER_REPLY, CURLE_PROXY, CURLE_SEND_FAIL_REWIND:
            .connectionFailed
        case CURLE_PEER_FAILED_VERIFICATION, CURLE_SSL_CONNECT_ERROR, CURLE_SSL_CERTPROBLEM,
             CURLE_SSL_CIPHER, CURLE_SSL_CACERT_BADFILE, CURLE_SSL_ISSUER_ERROR,
             CURLE_SSL_PINNEDPUBKEYNOTMATCH, CURLE_SSL_INVALIDCERTSTATUS, CURLE_SSL_CRL_BADFILE,
             CURLE_SSL_ENGINE_NOTFOUND, CURLE_SSL_ENGINE_SETFAILED, CURLE_SSL_ENGINE_INITFAILED,
             CURLE_SSL_SHUTDOWN_FAILED, CURLE_USE_SSL_FAILED, CURLE_SSL_CLIENTCERT:
            .tls
        default:
            .other
        }
    }
}
