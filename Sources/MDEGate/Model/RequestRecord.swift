import MDEGateCore

/// Everything the gateway knows about one request: what `GET /v1/requests/{id}` answers, what
/// the store keeps, and what the audit trail shows (who asked, when, and what the upstream said).
public struct RequestRecord: Sendable, Equatable {
    public enum State: String, Sendable, Codable {
        case queued, sending, done, failed, withdrawn

        /// Whether the request will not change any more.
        public var isFinal: Bool { self == .done || self == .failed || self == .withdrawn }
    }

    /// The caller, from the socket's peer credentials and the `Mdegate-Client` header.
    public struct Client: Sendable, Equatable, Codable {
        public var uid: UInt32
        public var pid: Int32
        public var name: String?

        enum CodingKeys: String, CodingKey { case uid, pid, name }

        /// Writes `name` as null when absent, so every record has the same shape.
        public func encode(to encoder: any Encoder) throws {
            var container = encoder.container(keyedBy: CodingKeys.self)
            try container.encode(uid, forKey: .uid)
            try container.encode(pid, forKey: .pid)
            try container.encode(name, forKey: .name)
        }
    }

    /// The upstream's final answer, as it came.
    public struct Response: Sendable, Equatable {
        public var status: Int
        public var body: [UInt8]
        public var contentType: String?
    }

    public var id: RequestID
    public var machineActionID: String
    public var comment: String
    public var client: Client
    public var state: State
    public var attempts: Int
    /// The request this one was coalesced onto, if any.
    public var joined: RequestID?
    public var createdAt: Timestamp
    public var completedAt: Timestamp?
    public var response: Response?
    /// Why the last attempt got no answer (timeout, connection error), if it did not.
    public var lastError: String?

    public var clientID: ClientID { ClientID(uid: client.uid, name: client.name) }
}

/// A record as clients see it, with the queue position worked out at the moment of asking.
public struct RequestRecordDocument: Encodable, Sendable {
    public var record: RequestRecord
    public var position: Int?
    public var estimatedDispatchAt: Timestamp?

    enum Keys: String, CodingKey {
        case id, machineActionId, comment, client, state, position, estimatedDispatchAt, attempts
        case joined, createdAt, completedAt, response, lastError
    }

    enum ResponseKeys: String, CodingKey { case status, body }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: Keys.self)
        try container.encode(record.id, forKey: .id)
        try container.encode(record.machineActionID, forKey: .machineActionId)
        try container.encode(record.comment, forKey: .comment)
        try container.encode(record.client, forKey: .client)
        try container.encode(record.state, forKey: .state)
        if record.state == .queued, let position, let estimatedDispatchAt {
            try container.encode(position, forKey: .position)
            try container.encode(JSON.timestamp(estimatedDispatchAt), forKey: .estimatedDispatchAt)
        }
        try container.encode(record.attempts, forKey: .attempts)
        try container.encode(record.joined, forKey: .joined)
        try container.encode(JSON.timestamp(record.createdAt), forKey: .createdAt)
        try container.encode(record.completedAt.map(JSON.timestamp), forKey: .completedAt)
        if let response = record.response {
            var nested = container.nestedContainer(keyedBy: ResponseKeys.self, forKey: .response)
            try nested.encode(response.status, forKey: .status)
            try nested.encode(JSONValue(parsingOrQuoting: response.body), forKey: .body)
        } else {
            try container.encodeNil(forKey: .response)
        }
        try container.encodeIfPresent(record.lastError, forKey: .lastError)
    }
}
