import Foundation
import Logging
import MDEGateConfig
import MDEGateSharedQuota

extension GatewayConfiguration.SharedQuota {
    /// The connection these settings describe, with the password read from `password_file`.
    /// Errors name the key, never the password.
    public func connection() throws -> SharedQuotaConnection? {
        guard let endpoint else { return nil }
        var password: String?
        if let passwordFile {
            do {
                let text = try String(contentsOfFile: passwordFile, encoding: .utf8)
                // One line, as `echo secret > file` or systemd-creds write it.
                password = String(text.trimmingCharacters(in: .newlines))
            } catch {
                throw DaemonError(
                    "shared_quota.password_file: cannot read \(passwordFile): \((error as NSError).localizedDescription)")
            }
            if password?.isEmpty == true {
                throw DaemonError("shared_quota.password_file: \(passwordFile) is empty; write the database password in it")
            }
        }
        let target: SharedQuotaConnection.Endpoint =
            switch endpoint {
            case .tcp(let host, let port): .tcp(host: host, port: port)
            case .unixSocket(let path): .unixSocket(path: path)
            }
        if let caFile, tls, !FileManager.default.isReadableFile(atPath: caFile) {
            throw DaemonError("shared_quota.ca_file: cannot read \(caFile)")
        }
        return SharedQuotaConnection(
            endpoint: target, username: username, database: database, password: password,
            security: tls ? .verifiedTLS(caFile: caFile) : .plain)
    }
}
