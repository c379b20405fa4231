import Foundation
import MDEGateWire
import Testing

@Suite("The local API's documents keep their shape")
struct DocumentShapeTests {
    private func object(_ value: some Encodable) throws -> [String: Any] {
        try #require(JSONSerialization.jsonObject(with: Data(JSON.encode(value))) as? [String: Any])
    }

    @Test("an absent value is written as null, never left out")
    func absentIsNull() throws {
        let status = StatusDocument(
            limits: [.init(spec: "100/1m", calls: 100, windowSeconds: 60, used: 0, nextFreeAt: nil)],
            guardMs: 250,
            queue: .init(depth: 0, clients: []),
            pausedUntil: nil,
            inFlight: 0,
            apis: [.init(name: "cancel", limits: [], pausedUntil: nil, queued: 0)],
            upstream: .init(baseUrl: "http://127.0.0.1:1", lastStatus: nil, lastError: nil),
            auth: .init(mode: "token_file", tokenExpiresAt: nil, lastError: nil)
        )
        let document = try object(status)
        #expect(document["pausedUntil"] is NSNull)
        #expect(document["sharedQuota"] is NSNull)
        let upstream = try #require(document["upstream"] as? [String: Any])
        #expect(upstream["lastStatus"] is NSNull && upstream["lastError"] is NSNull)
        let auth = try #require(document["auth"] as? [String: Any])
        #expect(auth["tokenExpiresAt"] is NSNull && auth["lastError"] is NSNull)
        let limit = try #require((document["limits"] as? [[String: Any]])?.first)
        #expect(limit["nextFreeAt"] is NSNull)
        let api = try #require((document["apis"] as? [[String: Any]])?.first)
        #expect(api["pausedUntil"] is NSNull)
        #expect(api["lastHour"] == nil, "the last hour is left out when there is none")

        #expect(try object(RequestClient(uid: 0, pid: 1, name: nil))["name"] is NSNull)
        #expect(try object(RequestListDocument(requests: [], next: nil))["next"] is NSNull)
        #expect(try object(RequestListDocument(requests: [], next: "abc"))["next"] as? String == "abc")
    }

    @Test("a document reads back the same, and a missing key reads as absent")
    func readsBack() throws {
        let client = RequestClient(uid: 1000, pid: 42, name: "soar")
        #expect(try JSON.decoder.decode(RequestClient.self, from: Data(JSON.encode(client))) == client)
        let unnamed = try JSON.decoder.decode(RequestClient.self, from: Data(#"{"uid":1,"pid":2}"#.utf8))
        #expect(unnamed == RequestClient(uid: 1, pid: 2, name: nil))
        let named = try JSON.decoder.decode(RequestClient.self, from: Data(#"{"uid":1,"pid":2,"name":null}"#.utf8))
        #expect(named.name == nil)
    }
}
