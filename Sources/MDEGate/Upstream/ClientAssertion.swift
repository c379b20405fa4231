import Crypto
import Foundation
import JWTKit
import MDEGateConfig
import SwiftASN1
import X509
import _CryptoExtras

/// Certificate credentials: signs the JWT client assertion the Microsoft identity platform takes
/// instead of a client secret (`client_assertion_type=urn:ietf:params:oauth:client-assertion-type:jwt-bearer`).
///
/// The assertion is RS256-signed with the app's private key and names the certificate by its
/// thumbprints (`x5t#S256`, and `x5t` for older tenants), so the identity platform finds the
/// public key the admin uploaded. Each assertion lives five minutes and carries a fresh `jti`.
///
/// A class, not a struct: inline in `OAuth2TokenProvider.Credential` (an enum of two payloads),
/// the struct's last field, the key's reference, carried the enum's case in its spare high bits.
/// LeakSanitizer cannot read such a pointer, so a daemon holding a certificate credential at its
/// exit reported the key as leaked (`make test-sanitizers`). A class reference in the case
/// leaves the key's pointer as it is.
public final class ClientAssertionSigner: Sendable {
    let clientID: String
    /// base64url SHA-256 and SHA-1 of the certificate's DER encoding.
    let thumbprintSHA256: String
    let thumbprintSHA1: String
    let notValidAfter: Date
    private let key: JWTKit.Insecure.RSA.PrivateKey

    static let assertionType = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
    static let lifetime: TimeInterval = 300

    /// Reads and checks the pair; every error names the file and never shows the key.
    init(certificateFile: String, keyFile: String, clientID: String) throws(TokenError) {
        self.clientID = clientID
        let certificatePEM = try Self.read(certificateFile, key: "auth.client_certificate_file")
        let certificate: Certificate
        let der: [UInt8]
        do {
            let document = try PEMDocument(pemString: certificatePEM)
            guard document.discriminator == "CERTIFICATE" else {
                throw TokenError(message: "auth.client_certificate_file \(certificateFile) holds a \(document.discriminator), not a CERTIFICATE")
            }
            der = document.derBytes
            certificate = try Certificate(derEncoded: der)
        } catch let error as TokenError {
            throw error
        } catch {
            throw TokenError(message: "auth.client_certificate_file \(certificateFile) is not a PEM certificate (-----BEGIN CERTIFICATE-----)")
        }
        let keyPEM = try Self.read(keyFile, key: "auth.client_key_file")
        let rsaKey: _RSA.Signing.PrivateKey
        do {
            rsaKey = try _RSA.Signing.PrivateKey(pemRepresentation: keyPEM)
            key = try JWTKit.Insecure.RSA.PrivateKey(backing: rsaKey)
        } catch {
            // The key's text is never part of a message.
            throw TokenError(message: "auth.client_key_file \(keyFile) is not an unencrypted RSA private key of at least 2048 bits in PEM (PKCS#1 or PKCS#8); the identity platform takes RSA certificates only")
        }
        guard Certificate.PublicKey(rsaKey.publicKey) == certificate.publicKey else {
            throw TokenError(message: "auth.client_key_file \(keyFile) does not belong to the certificate in auth.client_certificate_file \(certificateFile)")
        }
        thumbprintSHA256 = Base64URL.encode(SHA256.hash(data: der))
        thumbprintSHA1 = Base64URL.encode(Crypto.Insecure.SHA1.hash(data: der))
        notValidAfter = certificate.notValidAfter
    }

    /// A signed assertion for the token endpoint `audience`, valid from `now` for five minutes.
    func assertion(audience: String, now: Date) async throws(TokenError) -> String {
        let issued = Int(now.timeIntervalSince1970)
        let claims = Claims(
            aud: audience, iss: clientID, sub: clientID, jti: UUID().uuidString.lowercased(),
            nbf: issued, iat: issued, exp: issued + Int(Self.lifetime))
        var header = JWTHeader()
        header.x5tS256 = thumbprintSHA256
        header.x5t = thumbprintSHA1
        do {
            // jwt-kit writes `alg` (RS256, from the key) and `typ`, and signs with PKCS #1 v1.5.
            return try await JWTKeyCollection().add(rsa: key, digestAlgorithm: .sha256).sign(claims, header: header)
        } catch {
            throw TokenError(message: "could not sign the client assertion with auth.client_key_file: \(error)")
        }
    }

    /// Times in whole seconds, and `aud` a string: the identity platform refuses an audience array.
    private struct Claims: JWTPayload {
        var aud, iss, sub, jti: String
        var nbf, iat, exp: Int

        /// Nothing to check: the assertion is made here, and checked by the identity platform.
        func verify(using _: some JWTAlgorithm) {}
    }

    private static func read(_ path: String, key: String) throws(TokenError) -> String {
        guard let data = try? FileContents.read(atPath: path) else {
            throw TokenError(message: "cannot read \(key) \(path): the file does not exist or is not readable by this user")
        }
        return String(decoding: data, as: UTF8.self)
    }
}

/// base64url without padding (RFC 4648 §5), as JWTs spell it.
enum Base64URL {
    static func encode(_ bytes: some Sequence<UInt8>) -> String {
        Data(bytes).base64EncodedString()
            .replacingOccurrences(of: "+", with: "-")
            .replacingOccurrences(of: "/", with: "_")
            .replacingOccurrences(of: "=", with: "")
    }
}
