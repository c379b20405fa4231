/// What `GET /v1/status` answers and `mdegate status` renders.
public struct StatusDocument: Codable, Sendable, Equatable {
    public struct LimitState: Codable, Sendable, Equatable {
        public var spec: String
        public var calls: Int
        public var windowSeconds: Double
        public var used: Int
        @AlwaysWritten public var nextFreeAt: String?

        public init(spec: String, calls: Int, windowSeconds: Double, used: Int, nextFreeAt: String?) {
            self.spec = spec
            self.calls = calls
            self.windowSeconds = windowSeconds
            self.used = used
            self.nextFreeAt = nextFreeAt
        }
    }

    public struct Queue: Codable, Sendable, Equatable {
        public struct ClientDepth: Codable, Sendable, Equatable {
            public var client: String
            public var depth: Int

            public init(client: String, depth: Int) {
                self.client = client
                self.depth = depth
            }
        }
        public var depth: Int
        public var clients: [ClientDepth]

        public init(depth: Int, clients: [ClientDepth]) {
            self.depth = depth
            self.clients = clients
        }
    }

    /// One upstream API's quota and queue: each has its own ledger and its own 429 pause.
    public struct APIState: Codable, Sendable, Equatable {
        /// `cancel`, `isolate`, … (the names of configuration's `quota.apis`).
        public var name: String
        public var limits: [LimitState]
        @AlwaysWritten public var pausedUntil: String?
        /// Upstream calls waiting (coalesced requests ride on one), backoffs not counted.
        public var queued: Int
        /// This host's attempts per minute over the last hour.
        public var lastHour: Timeline?

        public init(name: String, limits: [LimitState], pausedUntil: String?, queued: Int, lastHour: Timeline? = nil) {
            self.name = name
            self.limits = limits
            self.pausedUntil = pausedUntil
            self.queued = queued
            self.lastHour = lastHour
        }

    }

    /// Attempts per minute: sixty minutes from `start` (ISO 8601, the start of the oldest), the
    /// last one in progress. `throttled` counts the attempts among them answered 429.
    public struct Timeline: Codable, Sendable, Equatable {
        public var start: String
        public var attempts: [Int]
        public var throttled: [Int]

        public init(start: String, attempts: [Int], throttled: [Int]) {
            self.start = start
            self.attempts = attempts
            self.throttled = throttled
        }
    }

    public struct Upstream: Codable, Sendable, Equatable {
        public var baseUrl: String
        @AlwaysWritten public var lastStatus: Int?
        @AlwaysWritten public var lastError: String?

        public init(baseUrl: String, lastStatus: Int?, lastError: String?) {
            self.baseUrl = baseUrl
            self.lastStatus = lastStatus
            self.lastError = lastError
        }
    }

    public struct Auth: Codable, Sendable, Equatable {
        public var mode: String
        @AlwaysWritten public var tokenExpiresAt: String?
        @AlwaysWritten public var lastError: String?

        public init(mode: String, tokenExpiresAt: String?, lastError: String?) {
            self.mode = mode
            self.tokenExpiresAt = tokenExpiresAt
            self.lastError = lastError
        }
    }

    /// The ledger this host shares with others in PostgreSQL (`shared_quota`); nil when this
    /// host spends the quota alone.
    public struct SharedQuota: Codable, Sendable, Equatable {
        /// Every host's attempts in one limit's window, from the database.
        public struct Usage: Codable, Sendable, Equatable {
            public struct HostUse: Codable, Sendable, Equatable {
                public var host: String
                public var used: Int

                public init(host: String, used: Int) {
                    self.host = host
                    self.used = used
                }
            }

            public var api: String
            public var spec: String
            /// Every host's attempts together.
            public var used: Int
            public var hosts: [HostUse]

            public init(api: String, spec: String, used: Int, hosts: [HostUse]) {
                self.api = api
                self.spec = spec
                self.used = used
                self.hosts = hosts
            }
        }

        /// How long this host's last slot requests took (ask to answer, the database's round trip
        /// included), over up to the last 1,000.
        public struct RoundTrips: Codable, Sendable, Equatable {
            public var samples: Int
            public var p50Ms: Double
            public var p99Ms: Double
            public var maxMs: Double

            public init(samples: Int, p50Ms: Double, p99Ms: Double, maxMs: Double) {
                self.samples = samples
                self.p50Ms = p50Ms
                self.p99Ms = p99Ms
                self.maxMs = maxMs
            }
        }

        /// The server, user and database (never a password).
        public var database: String
        public var key: String
        /// This host's name in the ledger.
        public var host: String
        /// Whether the last request to the database was answered. While it is not, nothing is
        /// sent upstream (fail closed); requests are still admitted and kept.
        public var reachable: Bool
        /// Why the database could not be used, while it cannot.
        @AlwaysWritten public var lastError: String?
        /// Since when it could not be used.
        @AlwaysWritten public var unreachableSince: String?
        /// The limits in use by every host (limits with no use left out); nil when the database
        /// could not be asked for this status.
        @AlwaysWritten public var usage: [Usage]?
        /// Nil before the first slot request was answered.
        @AlwaysWritten public var slotRequests: RoundTrips?

        public init(
            database: String, key: String, host: String, reachable: Bool, lastError: String?,
            unreachableSince: String?, usage: [Usage]?, slotRequests: RoundTrips? = nil
        ) {
            self.database = database
            self.key = key
            self.host = host
            self.reachable = reachable
            self.lastError = lastError
            self.unreachableSince = unreachableSince
            self.usage = usage
            self.slotRequests = slotRequests
        }

    }

    /// The `cancel` API's limits (as before there were several APIs; `apis` has every one).
    public var limits: [LimitState]
    public var guardMs: Int
    public var queue: Queue
    /// The `cancel` API's pause.
    @AlwaysWritten public var pausedUntil: String?
    public var inFlight: Int
    /// Every upstream API, in the route table's order.
    public var apis: [APIState]
    public var upstream: Upstream
    public var auth: Auth
    @AlwaysWritten public var sharedQuota: SharedQuota?

    public init(
        limits: [LimitState], guardMs: Int, queue: Queue, pausedUntil: String?, inFlight: Int, apis: [APIState],
        upstream: Upstream, auth: Auth, sharedQuota: SharedQuota? = nil
    ) {
        self.limits = limits
        self.guardMs = guardMs
        self.queue = queue
        self.pausedUntil = pausedUntil
        self.inFlight = inFlight
        self.apis = apis
        self.upstream = upstream
        self.auth = auth
        self.sharedQuota = sharedQuota
    }
}
