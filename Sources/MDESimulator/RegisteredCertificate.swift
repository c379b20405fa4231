import Crypto
import Foundation
import X509
import _CryptoExtras

/// A certificate uploaded to the simulated app registration (`--client-certificate`): the key a
/// client assertion must be signed with, found by the thumbprint in the assertion's header.
///
/// The identity platform names a certificate by a hash of its DER bytes exactly as uploaded, so
/// the thumbprints are taken over the bytes of the PEM block, not over a re-encoding of the parsed
/// certificate.
struct RegisteredCertificate: Sendable {
    /// Where it came from, for messages.
    let path: String
    /// base64url(SHA-256(DER)), what the `x5t#S256` header carries.
    let sha256Thumbprint: String
    /// base64url(SHA-1(DER)), what the older `x5t` header carries.
    let sha1Thumbprint: String
    let publicKey: _RSA.Signing.PublicKey

    /// Reads the first certificate of a PEM file; the identity platform signs-in apps with RSA
    /// certificates only, so any other key is refused here, at start-up.
    init(pemFile path: String) throws(CertificateFileError) {
        try CertificateFileError.requireReadable(path, flag: "--client-certificate")
        let text = (try? String(contentsOfFile: path, encoding: .utf8)) ?? ""
        guard let der = PEMBlock.firstDER(labelled: "CERTIFICATE", in: text) else {
            throw CertificateFileError(
                flag: "--client-certificate", path: path, problem: "the file holds no PEM certificate (-----BEGIN CERTIFICATE-----)")
        }
        let certificate: Certificate
        do {
            certificate = try Certificate(derEncoded: der)
        } catch {
            throw CertificateFileError(flag: "--client-certificate", path: path, problem: "the file is not a valid X.509 certificate (\(error))")
        }
        guard let publicKey = _RSA.Signing.PublicKey(certificate.publicKey) else {
            throw CertificateFileError(
                flag: "--client-certificate", path: path,
                problem: "the certificate has a non-RSA key; app registrations take RSA certificates (e.g. openssl req -x509 -newkey rsa:2048)")
        }
        self.path = path
        self.sha256Thumbprint = Base64URL.encode(SHA256.hash(data: der))
        self.sha1Thumbprint = Base64URL.encode(Insecure.SHA1.hash(data: der))
        self.publicKey = publicKey
    }
}

/// A certificate or key file given on the command line that cannot be used; the message names the
/// flag, the file and what is wrong with it.
struct CertificateFileError: Error, CustomStringConvertible {
    var flag: String
    var path: String
    var problem: String

    var description: String { "\(self.flag) \(self.path): \(self.problem)." }

    /// Fails with the system's reason when `path` cannot be read, before any parser gives a vaguer one.
    static func requireReadable(_ path: String, flag: String) throws(CertificateFileError) {
        guard access(path, R_OK) == 0 else {
            throw CertificateFileError(flag: flag, path: path, problem: "cannot read the file (\(String(cString: strerror(errno))))")
        }
    }
}

/// The DER bytes inside PEM text (RFC 7468): base64 between `-----BEGIN label-----` and `-----END label-----`.
enum PEMBlock {
    static func firstDER(labelled label: String, in text: String) -> [UInt8]? {
        let begin = "-----BEGIN \(label)-----"
        let end = "-----END \(label)-----"
        guard let start = text.range(of: begin), let stop = text.range(of: end, range: start.upperBound..<text.endIndex)
        else { return nil }
        let base64 = text[start.upperBound..<stop.lowerBound].filter { !$0.isWhitespace }
        return Data(base64Encoded: String(base64)).map { [UInt8]($0) }
    }
}

/// base64url without padding (RFC 4648 §5), how JWS headers spell thumbprints.
enum Base64URL {
    static func encode(_ bytes: some Sequence<UInt8>) -> String {
        Data(bytes).base64EncodedString()
            .replacingOccurrences(of: "+", with: "-")
            .replacingOccurrences(of: "/", with: "_")
            .replacingOccurrences(of: "=", with: "")
    }

}
