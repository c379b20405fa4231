/// Where a request is in its life.
public enum RequestState: String, Sendable, Codable {
    case queued, sending, done, failed, withdrawn

    /// Whether the request will not change any more.
    public var isFinal: Bool { self == .done || self == .failed || self == .withdrawn }
}

/// The caller, from the socket's peer credentials and the `Mdegate-Client` header.
public struct RequestClient: Sendable, Equatable, Codable {
    public var uid: UInt32
    public var pid: Int32
    @AlwaysWritten public var name: String?

    public init(uid: UInt32, pid: Int32, name: String?) {
        self.uid = uid
        self.pid = pid
        self.name = name
    }
}

/// A request record as `GET /v1/requests/{id}` (and a 202) shows it: who asked for what, when,
/// where it stands, and what the upstream said. Times are ISO 8601 UTC with milliseconds.
public struct RequestRecordDocument: Codable, Sendable, Equatable {
    /// The upstream's final answer: its status, and its body as JSON (a string if it was not JSON).
    public struct Response: Codable, Sendable, Equatable {
        public var status: Int
        public var body: JSONValue

        public init(status: Int, body: JSONValue) {
            self.status = status
            self.body = body
        }
    }

    /// The `Mdegate-Request-Id`.
    public var id: String
    /// The upstream API called (`cancel`, `isolate`, …).
    public var api: String
    /// The id in the path: a machine action id or a machine id; empty for the listing.
    public var target: String
    /// `target` again when it is a machine action id (cancel, get_machine_action), else null: the
    /// field records had before there was more than cancel.
    public var machineActionId: String?
    /// The body's `Comment`; null on the GET routes.
    public var comment: String?
    /// The call's other parameters (`IsolationType`, `ScanType`, `Sha1`, or the listing's
    /// `$filter`, `$top`, `$skip`), as sent.
    public var options: [String: String]
    public var client: RequestClient
    public var state: RequestState
    /// 1-based place in the order of dispatch; present while queued.
    public var position: Int?
    /// When its slot opens if nothing else changes; present while queued.
    public var estimatedDispatchAt: String?
    public var attempts: Int
    /// The request this one was coalesced onto.
    public var joined: String?
    public var createdAt: String
    /// When its first attempt left (the end of its queue wait); null until then.
    public var sentAt: String?
    public var completedAt: String?
    public var response: Response?
    /// Why the last attempt got no answer (or could not be sent), if so.
    public var lastError: String?

    public init(
        id: String, api: String, target: String, machineActionId: String?, comment: String?,
        options: [String: String], client: RequestClient, state: RequestState,
        position: Int?, estimatedDispatchAt: String?, attempts: Int, joined: String?, createdAt: String,
        completedAt: String?, response: Response?, lastError: String?, sentAt: String? = nil
    ) {
        self.sentAt = sentAt
        self.id = id
        self.api = api
        self.target = target
        self.machineActionId = machineActionId
        self.comment = comment
        self.options = options
        self.client = client
        self.state = state
        self.position = position
        self.estimatedDispatchAt = estimatedDispatchAt
        self.attempts = attempts
        self.joined = joined
        self.createdAt = createdAt
        self.completedAt = completedAt
        self.response = response
        self.lastError = lastError
    }

    enum CodingKeys: String, CodingKey {
        case id, api, target, machineActionId, comment, options, client, state, position, estimatedDispatchAt, attempts
        case joined, createdAt, sentAt, completedAt, response, lastError
    }

    /// Every record has the same shape: `joined`, `completedAt` and `response` are written as
    /// null when absent; `position` and `estimatedDispatchAt` only while queued; `lastError` only
    /// when there is one.
    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(id, forKey: .id)
        try container.encode(api, forKey: .api)
        try container.encode(target, forKey: .target)
        try container.encode(machineActionId, forKey: .machineActionId)
        try container.encode(comment, forKey: .comment)
        try container.encode(options, forKey: .options)
        try container.encode(client, forKey: .client)
        try container.encode(state, forKey: .state)
        if state == .queued, let position, let estimatedDispatchAt {
            try container.encode(position, forKey: .position)
            try container.encode(estimatedDispatchAt, forKey: .estimatedDispatchAt)
        }
        try container.encode(attempts, forKey: .attempts)
        try container.encode(joined, forKey: .joined)
        try container.encode(createdAt, forKey: .createdAt)
        try container.encode(sentAt, forKey: .sentAt)
        try container.encode(completedAt, forKey: .completedAt)
        try container.encode(response, forKey: .response)
        try container.encodeIfPresent(lastError, forKey: .lastError)
    }
}

/// A page of the audit listing (`GET /v1/requests`): records newest first, and the cursor of the
/// next page (null on the last).
public struct RequestListDocument: Codable, Sendable, Equatable {
    public var requests: [RequestRecordDocument]
    @AlwaysWritten public var next: String?

    public init(requests: [RequestRecordDocument], next: String?) {
        self.requests = requests
        self.next = next
    }
}
