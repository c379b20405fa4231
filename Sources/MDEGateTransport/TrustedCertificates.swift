import CCurl

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The CA certificates upstream servers are checked against when `caFile` is configured.
///
/// `ca_file` must add a CA to the system's trust, never replace it (a private CA for a TLS
/// inspecting proxy must not make Microsoft's certificates untrusted). libcurl's `CAINFO` would
/// replace the system bundle, so this builds one PEM blob from the system bundle followed by the
/// extra file and hands it to libcurl as `CURLOPT_CAINFO_BLOB`. libcurl's `CAPATH` (the hashed
/// system directory, where one is compiled in) stays active as well.
///
/// The blob is passed with `CURL_BLOB_NOCOPY`, so it must outlive every easy handle that
/// names it: each transfer keeps a strong reference to this object. The storage is written once
/// in `init` and only read afterwards, which is why sharing it across threads is safe.
final class TrustedCertificates: @unchecked Sendable {
    private let storage: UnsafeMutableRawBufferPointer

    /// Where the bundle came from, for log lines.
    let systemBundlePath: String?

    init(addingCAFile caFile: String) throws(TransportError) {
        let extra: [UInt8]
        do {
            extra = try readWholeFile(caFile)
        } catch {
            throw TransportError(
                kind: .tls,
                message: "cannot read the CA file '\(caFile)': \(error.reason); point ca_file at a readable PEM file or leave it empty"
            )
        }
        guard containsPEMCertificate(extra) else {
            throw TransportError(
                kind: .tls,
                message: "the CA file '\(caFile)' holds no PEM certificate (-----BEGIN CERTIFICATE-----); point ca_file at a PEM bundle or leave it empty"
            )
        }

        var system: [UInt8] = []
        var systemPath: String?
        for path in Self.systemBundleCandidates() {
            if let contents = try? readWholeFile(path), containsPEMCertificate(contents) {
                system = contents
                systemPath = path
                break
            }
        }

        var combined = system
        if !combined.isEmpty, combined.last != UInt8(ascii: "\n") {
            combined.append(UInt8(ascii: "\n"))
        }
        combined.append(contentsOf: extra)

        storage = UnsafeMutableRawBufferPointer.allocate(byteCount: combined.count, alignment: 1)
        storage.copyBytes(from: combined)
        systemBundlePath = systemPath
    }

    deinit {
        storage.deallocate()
    }

    /// Points `option` (`CURLOPT_CAINFO_BLOB` or `CURLOPT_PROXY_CAINFO_BLOB`) at the bundle.
    func apply(to easy: OpaquePointer, option: CURLoption) -> CURLcode {
        // libcurl copies the struct itself; only the bytes it points to must stay alive.
        var blob = curl_blob(data: storage.baseAddress, len: storage.count, flags: UInt32(CURL_BLOB_NOCOPY))
        return mdegate_curl_easy_setopt_blob(easy, option, &blob)
    }

    /// The bundle libcurl itself would use (Debian: /etc/ssl/certs/ca-certificates.crt), then
    /// the usual places on other distributions.
    private static func systemBundleCandidates() -> [String] {
        var candidates: [String] = []
        if let easy = curl_easy_init() {
            defer { curl_easy_cleanup(easy) }
            var path: UnsafeMutablePointer<CChar>?
            if mdegate_curl_easy_getinfo_string(easy, CURLINFO_CAINFO, &path) == CURLE_OK, let path {
                candidates.append(String(cString: path))
            }
        }
        candidates += ["/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt", "/etc/ssl/cert.pem"]
        return candidates
    }
}

private struct FileReadError: Error {
    let reason: String
}

private func readWholeFile(_ path: String) throws(FileReadError) -> [UInt8] {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { throw FileReadError(reason: String(cString: strerror(errno))) }
    defer { close(fd) }
    var contents: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 64 * 1024)
    while true {
        let count = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        if count == 0 { return contents }
        if count < 0 {
            if errno == EINTR { continue }
            throw FileReadError(reason: String(cString: strerror(errno)))
        }
        contents.append(contentsOf: chunk[0..<count])
        if contents.count > 8_000_000 {
            // libcurl refuses blobs over CURL_MAX_INPUT_LENGTH (8 MB).
            throw FileReadError(reason: "larger than 8 MB")
        }
    }
}

private func containsPEMCertificate(_ bytes: [UInt8]) -> Bool {
    let marker = Array("-----BEGIN CERTIFICATE-----".utf8)
    guard bytes.count >= marker.count else { return false }
    return (0...(bytes.count - marker.count)).contains { start in
        bytes[start..<(start + marker.count)].elementsEqual(marker)
    }
}
