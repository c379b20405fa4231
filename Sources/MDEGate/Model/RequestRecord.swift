import MDEGateCore
import MDEGateWire

/// Everything the gateway knows about one request: what `GET /v1/requests/{id}` answers, what
/// the store keeps, and what the audit trail shows (who asked, when, and what the upstream said).
public struct RequestRecord: Sendable, Equatable {
    public typealias State = RequestState
    public typealias Client = RequestClient

    /// The upstream's final answer, as it came.
    public struct Response: Sendable, Equatable {
        public var status: Int
        public var body: [UInt8]
        public var contentType: String?
    }

    public var id: RequestID
    /// What was asked: the API, its target and parameters.
    public var call: ActionCall
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
    /// When its first attempt left (or the attempt of the request it joined): the end of its
    /// queue wait. Nil until then, and for a request withdrawn before it was sent.
    public var sentAt: Timestamp? = nil

    public var clientID: ClientID { ClientID(uid: client.uid, name: client.name) }
}

extension RequestRecordDocument {
    /// The record as clients see it, with its place in line worked out at the moment of asking.
    init(record: RequestRecord, position: Int?, estimatedDispatchAt: Timestamp?) {
        self.init(
            id: record.id, api: record.call.api.name, target: record.call.target,
            machineActionId: Route.named(record.call.api)?.target == .machineAction ? record.call.target : nil,
            comment: record.call.comment, options: record.call.options, client: record.client,
            state: record.state, position: position, estimatedDispatchAt: estimatedDispatchAt.map(JSON.timestamp),
            attempts: record.attempts, joined: record.joined, createdAt: JSON.timestamp(record.createdAt),
            completedAt: record.completedAt.map(JSON.timestamp),
            response: record.response.map { .init(status: $0.status, body: JSONValue(parsingOrQuoting: $0.body)) },
            lastError: record.lastError, sentAt: record.sentAt.map(JSON.timestamp))
    }
}
