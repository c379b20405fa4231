#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Logging
import MDEGateCore

/// The gateway's settings, as read from the YAML file and `MDEGATE_…` environment variables.
///
/// The nested types mirror the file's sections one to one, so an operator who reads
/// `upstream.max_concurrency` in the file finds `configuration.upstream.maxConcurrency` in code.
/// A value of this type built by ``load(path:environment:workingDirectory:)`` has been validated
/// and has every default and cloud preset filled in; `init()` alone gives the documented defaults,
/// which lack credentials and are therefore not a valid configuration by themselves.
public struct GatewayConfiguration: Sendable, Equatable {
    public var socket: Socket
    public var state: State
    public var upstream: Upstream
    public var auth: Auth
    public var quota: Quota
    public var retry: Retry
    public var queue: Queue
    public var log: Log
    public var metrics: Metrics
    public var sharedQuota: SharedQuota

    /// Where `mdegate serve` and `check-config` look when no `--config` is given.
    public static let defaultPath = "/etc/mdegate/config.yaml"

    public init(
        socket: Socket = Socket(),
        state: State = State(),
        upstream: Upstream = Upstream(),
        auth: Auth = Auth(),
        quota: Quota = Quota(),
        retry: Retry = Retry(),
        queue: Queue = Queue(),
        log: Log = Log(),
        metrics: Metrics = Metrics(),
        sharedQuota: SharedQuota = SharedQuota()
    ) {
        self.metrics = metrics
        self.socket = socket
        self.state = state
        self.upstream = upstream
        self.auth = auth
        self.quota = quota
        self.retry = retry
        self.queue = queue
        self.log = log
        self.sharedQuota = sharedQuota
    }

    /// The Unix socket the local API listens on (unused under systemd socket activation,
    /// where systemd owns the socket).
    public struct Socket: Sendable, Equatable {
        public var path: String
        /// Permission bits given to the socket file after bind: with its group, they decide
        /// which local users may spend the quota.
        public var mode: mode_t

        public init(path: String = "/run/mdegate/mdegate.sock", mode: mode_t = 0o660) {
            self.path = path
            self.mode = mode
        }
    }

    /// The SQLite database that keeps queue, ledger and pause across restarts.
    public struct State: Sendable, Equatable {
        public var path: String
        /// How long finished requests are kept, for polling and the audit listing.
        public var retention: Duration

        public init(path: String = "/var/lib/mdegate/state.sqlite", retention: Duration = .seconds(86_400)) {
            self.path = path
            self.retention = retention
        }
    }

    /// The Microsoft Defender for Endpoint API the gateway forwards to.
    public struct Upstream: Sendable, Equatable {
        /// Which Microsoft cloud the tenant lives in; it supplies the defaults of
        /// `baseURL`, `auth.tokenURL` and `auth.scope`.
        public var cloud: Cloud
        /// The API root without a trailing slash, so `baseURL + "/api/…"` is the call's URL.
        public var baseURL: String
        public var connectTimeout: Duration
        public var requestTimeout: Duration
        /// Upstream attempts in flight at once; the quota, not this, is what bounds the rate.
        public var maxConcurrency: Int
        /// An extra CA bundle (PEM) trusted in addition to the system's; verification stays on.
        public var caFile: String?
        /// A proxy URL as libcurl understands it (`http://host:3128`, `socks5h://…`).
        public var proxy: String?

        public init(
            cloud: Cloud = .commercial,
            baseURL: String? = nil,
            connectTimeout: Duration = .seconds(10),
            requestTimeout: Duration = .seconds(30),
            maxConcurrency: Int = 8,
            caFile: String? = nil,
            proxy: String? = nil
        ) {
            self.cloud = cloud
            self.baseURL = baseURL ?? cloud.baseURL
            self.connectTimeout = connectTimeout
            self.requestTimeout = requestTimeout
            self.maxConcurrency = maxConcurrency
            self.caFile = caFile
            self.proxy = proxy
        }
    }

    /// How the gateway gets its bearer token. Exactly one method is configured: a token file
    /// kept fresh by another tool, or OAuth2 client credentials (a secret or a certificate).
    public struct Auth: Sendable, Equatable {
        public var tokenFile: String?
        public var tenantID: String?
        public var clientID: String?
        /// Defaults to `$CREDENTIALS_DIRECTORY/client-secret` when systemd's `LoadCredential=`
        /// provides it, so the secret never sits in the configuration directory.
        public var clientSecretFile: String?
        public var clientCertificateFile: String?
        public var clientKeyFile: String?
        /// The token endpoint with `{tenant_id}` already replaced (when a tenant is set).
        public var tokenURL: String
        public var scope: String

        public init(
            tokenFile: String? = nil,
            tenantID: String? = nil,
            clientID: String? = nil,
            clientSecretFile: String? = nil,
            clientCertificateFile: String? = nil,
            clientKeyFile: String? = nil,
            tokenURL: String = Cloud.commercial.tokenURLTemplate,
            scope: String = Cloud.commercial.scope
        ) {
            self.tokenFile = tokenFile
            self.tenantID = tenantID
            self.clientID = clientID
            self.clientSecretFile = clientSecretFile
            self.clientCertificateFile = clientCertificateFile
            self.clientKeyFile = clientKeyFile
            self.tokenURL = tokenURL
            self.scope = scope
        }

        /// The way a token is obtained, derived from which keys are set; nil when the
        /// settings are incomplete (a loaded configuration always has one).
        public var method: Method? {
            if let tokenFile { return .tokenFile(path: tokenFile) }
            guard let tenantID, let clientID else { return nil }
            if let clientCertificateFile, let clientKeyFile {
                return .clientCertificate(
                    tenantID: tenantID, clientID: clientID,
                    certificateFile: clientCertificateFile, keyFile: clientKeyFile)
            }
            if let clientSecretFile {
                return .clientSecret(tenantID: tenantID, clientID: clientID, secretFile: clientSecretFile)
            }
            return nil
        }

        /// One way of obtaining a token; the daemon switches over it.
        public enum Method: Sendable, Equatable {
            /// A bearer token that another tool writes to a file; re-read when it changes.
            case tokenFile(path: String)
            /// OAuth2 client credentials with a shared secret read from a file.
            case clientSecret(tenantID: String, clientID: String, secretFile: String)
            /// OAuth2 client credentials with a certificate-signed client assertion.
            case clientCertificate(tenantID: String, clientID: String, certificateFile: String, keyFile: String)
        }
    }

    /// The upstream's rate limits, enforced as sliding windows (see `Limit`).
    public struct Quota: Sendable, Equatable {
        /// Every limit must allow an attempt before it starts; the defaults are Microsoft's.
        public var limits: [Limit]
        /// Extra time each window is held for, absorbing clock and network jitter between
        /// our ledger and Microsoft's counter; without it, edge-of-window calls earn 429s.
        public var guardBand: Duration
        /// Limits of single upstream APIs (by name: `isolate`, …) that differ from `limits`.
        public var apis: [String: [Limit]] = [:]

        public init(
            limits: [Limit] = [Limit(calls: 100, window: .seconds(60)), Limit(calls: 1500, window: .seconds(3600))],
            guardBand: Duration = .milliseconds(250)
        ) {
            self.limits = limits
            self.guardBand = guardBand
        }
    }

    /// Retries for 5xx answers, timeouts and connection errors (a 429 is not counted here).
    public struct Retry: Sendable, Equatable {
        /// Attempts per request, the first included.
        public var maxAttempts: Int
        public var initialBackoff: Duration
        public var maxBackoff: Duration

        public init(maxAttempts: Int = 4, initialBackoff: Duration = .seconds(1), maxBackoff: Duration = .seconds(60)) {
            self.maxAttempts = maxAttempts
            self.initialBackoff = initialBackoff
            self.maxBackoff = maxBackoff
        }
    }

    /// Bounds the durable queue; past it the gateway answers 503 instead of growing forever.
    public struct Queue: Sendable, Equatable {
        public var maxPending: Int

        public init(maxPending: Int = 100_000) {
            self.maxPending = maxPending
        }
    }

    public struct Log: Sendable, Equatable {
        public var level: Logger.Level
        /// `text` (one readable line per event) or `json` (one JSON object per line, for log
        /// shippers). Under systemd either starts with the syslog priority.
        public var format: Format

        public enum Format: String, CaseIterable, Sendable {
            case text, json
        }

        public init(level: Logger.Level = .info, format: Format = .text) {
            self.level = level
            self.format = format
        }
    }
}

extension GatewayConfiguration {
    /// Where Prometheus scrapes the metrics over TCP (it cannot reach a Unix socket). Nil: only
    /// `GET /metrics` on the socket.
    public struct Metrics: Sendable, Equatable {
        public struct Address: Sendable, Equatable, CustomStringConvertible {
            /// An IP address (IPv6 without brackets) or a host name.
            public var host: String
            public var port: Int

            public init(host: String, port: Int) {
                self.host = host
                self.port = port
            }

            /// `host:port`, IPv6 in brackets: the form the key is written in.
            public var description: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }

            /// `127.0.0.1:9469`, `[::1]:9469` or `localhost:9469`; nil for anything else.
            public init?(parsing text: String) {
                let host: Substring
                let port: Substring
                if text.hasPrefix("[") {
                    guard let close = text.firstIndex(of: "]"), text[text.index(after: close)...].hasPrefix(":") else { return nil }
                    host = text[text.index(after: text.startIndex)..<close]
                    port = text[text.index(close, offsetBy: 2)...]
                } else {
                    guard let colon = text.lastIndex(of: ":"), !text[..<colon].contains(":") else { return nil }
                    host = text[..<colon]
                    port = text[text.index(after: colon)...]
                }
                guard !host.isEmpty, !host.contains(where: \.isWhitespace), let number = Int(port), (1...65_535).contains(number)
                else { return nil }
                self.init(host: String(host), port: number)
            }
        }

        public var address: Address?

        public init(address: Address? = nil) {
            self.address = address
        }
    }

    /// One quota across hosts: the ledger in PostgreSQL that the mdegates of one app registration
    /// share (`shared_quota.*`). Without a `url`, this host spends the quota alone.
    public struct SharedQuota: Sendable, Equatable {
        /// Where the server listens.
        public enum Endpoint: Sendable, Equatable {
            case tcp(host: String, port: Int)
            /// The server's socket file, from `?host=/directory` (libpq's way).
            case unixSocket(path: String)
        }

        /// The URL as configured (it never holds a password); nil: no shared quota.
        public var url: String?
        public var endpoint: Endpoint?
        public var username = "mdegate"
        public var database = "mdegate"
        /// TLS, with the server's certificate verified; off only for a Unix socket, a loopback
        /// host, or `sslmode=disable`.
        public var tls = true
        public var passwordFile: String?
        public var caFile: String?
        /// The quota's name in the ledger: every host of one app registration uses the same.
        /// Filled in (default `<tenant_id>/<client_id>`, else `default`) only with a `url`.
        public var key = ""
        /// This host in the ledger and in status; filled in (default the machine's host name)
        /// only with a `url`.
        public var hostName = ""

        public init() {}

        public var isEnabled: Bool { endpoint != nil }

        static func changedKeys(from old: SharedQuota, to new: SharedQuota) -> [ConfigurationKey] {
            var keys: [ConfigurationKey] = []
            if old.url != new.url { keys.append(.sharedQuotaURL) }
            if old.passwordFile != new.passwordFile { keys.append(.sharedQuotaPasswordFile) }
            if old.caFile != new.caFile { keys.append(.sharedQuotaCAFile) }
            if old.key != new.key { keys.append(.sharedQuotaKey) }
            if old.hostName != new.hostName { keys.append(.sharedQuotaHostName) }
            return keys
        }
    }
}

/// The Microsoft clouds an MDE tenant can live in. Each has its own API host, login host and
/// token scope; picking the cloud sets all three, so one key cannot be forgotten.
public enum Cloud: String, CaseIterable, Sendable {
    case commercial
    case gcc
    case gccHigh = "gcc-high"
    case dod

    /// The API root for this cloud.
    public var baseURL: String {
        switch self {
        case .commercial: "https://api.securitycenter.microsoft.com"
        case .gcc: "https://api-gcc.securitycenter.microsoft.us"
        case .gccHigh, .dod: "https://api-gov.securitycenter.microsoft.us"
        }
    }

    /// The Microsoft Entra login host that issues tokens for this cloud (GCC still uses the
    /// commercial one).
    public var loginURL: String {
        switch self {
        case .commercial, .gcc: "https://login.microsoftonline.com"
        case .gccHigh, .dod: "https://login.microsoftonline.us"
        }
    }

    /// The token endpoint, with `{tenant_id}` to be replaced by the tenant.
    public var tokenURLTemplate: String { "\(loginURL)/{tenant_id}/oauth2/v2.0/token" }

    /// The OAuth2 scope that grants access to this cloud's API.
    public var scope: String { "\(baseURL)/.default" }
}
