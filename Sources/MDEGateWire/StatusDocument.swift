/// What `GET /v1/status` answers and `mdegate status` renders.
public struct StatusDocument: Codable, Sendable, Equatable {
    public struct LimitState: Codable, Sendable, Equatable {
        public var spec: String
        public var calls: Int
        public var windowSeconds: Double
        public var used: Int
        public var nextFreeAt: String?

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
        public var pausedUntil: String?
        /// Upstream calls waiting (coalesced requests ride on one), backoffs not counted.
        public var queued: Int

        public init(name: String, limits: [LimitState], pausedUntil: String?, queued: Int) {
            self.name = name
            self.limits = limits
            self.pausedUntil = pausedUntil
            self.queued = queued
        }

        enum CodingKeys: String, CodingKey { case name, limits, pausedUntil, queued }

        public func encode(to encoder: any Encoder) throws {
            var container = encoder.container(keyedBy: CodingKeys.self)
            try container.encode(name, forKey: .name)
            try container.encode(limits, forKey: .limits)
            try container.encode(pausedUntil, forKey: .pausedUntil)
            try container.encode(queued, forKey: .queued)
        }
    }

    public struct Upstream: Codable, Sendable, Equatable {
        public var baseUrl: String
        public var lastStatus: Int?
        public var lastError: String?

        public init(baseUrl: String, lastStatus: Int?, lastError: String?) {
            self.baseUrl = baseUrl
            self.lastStatus = lastStatus
            self.lastError = lastError
        }
    }

    public struct Auth: Codable, Sendable, Equatable {
        public var mode: String
        public var tokenExpiresAt: String?
        public var lastError: String?

        public init(mode: String, tokenExpiresAt: String?, lastError: String?) {
            self.mode = mode
            self.tokenExpiresAt = tokenExpiresAt
            self.lastError = lastError
        }
    }

    /// The `cancel` API's limits (as before there were several APIs; `apis` has every one).
    public var limits: [LimitState]
    public var guardMs: Int
    public var queue: Queue
    /// The `cancel` API's pause.
    public var pausedUntil: String?
    public var inFlight: Int
    /// Every upstream API, in the route table's order.
    public var apis: [APIState]
    public var upstream: Upstream
    public var auth: Auth

    public init(
        limits: [LimitState], guardMs: Int, queue: Queue, pausedUntil: String?, inFlight: Int, apis: [APIState],
        upstream: Upstream, auth: Auth
    ) {
        self.limits = limits
        self.guardMs = guardMs
        self.queue = queue
        self.pausedUntil = pausedUntil
        self.inFlight = inFlight
        self.apis = apis
        self.upstream = upstream
        self.auth = auth
    }

    enum CodingKeys: String, CodingKey { case limits, guardMs, queue, pausedUntil, inFlight, apis, upstream, auth }

    /// Writes every key, nulls included, so clients can rely on the shape.
    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(limits, forKey: .limits)
        try container.encode(guardMs, forKey: .guardMs)
        try container.encode(queue, forKey: .queue)
        try container.encode(pausedUntil, forKey: .pausedUntil)
        try container.encode(inFlight, forKey: .inFlight)
        try container.encode(apis, forKey: .apis)
        try container.encode(upstream, forKey: .upstream)
        try container.encode(auth, forKey: .auth)
    }
}

extension StatusDocument.LimitState {
    enum CodingKeys: String, CodingKey { case spec, calls, windowSeconds, used, nextFreeAt }
    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(spec, forKey: .spec)
        try container.encode(calls, forKey: .calls)
        try container.encode(windowSeconds, forKey: .windowSeconds)
        try container.encode(used, forKey: .used)
        try container.encode(nextFreeAt, forKey: .nextFreeAt)
    }
}

extension StatusDocument.Upstream {
    enum CodingKeys: String, CodingKey { case baseUrl, lastStatus, lastError }
    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(baseUrl, forKey: .baseUrl)
        try container.encode(lastStatus, forKey: .lastStatus)
        try container.encode(lastError, forKey: .lastError)
    }
}

extension StatusDocument.Auth {
    enum CodingKeys: String, CodingKey { case mode, tokenExpiresAt, lastError }
    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(mode, forKey: .mode)
        try container.encode(tokenExpiresAt, forKey: .tokenExpiresAt)
        try container.encode(lastError, forKey: .lastError)
    }
}
