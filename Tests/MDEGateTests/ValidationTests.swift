import Foundation
import MDEGateWire
import Testing

@testable import MDEGate

@Suite("Validation of local API input")
struct ValidationTests {
    @Test("machine action ids must be GUIDs", arguments: [
        ("988cc94e-7a8f-4b28-ab65-54970c5d5018", true),
        ("988CC94E-7A8F-4B28-AB65-54970C5D5018", true),
        ("../../machines/x", false),
        ("%2e%2e", false),
        ("988cc94e-7a8f-4b28-ab65-54970c5d501", false),
        ("988cc94e-7a8f-4b28-ab65-54970c5d5018-", false),
        ("988cc94e7a8f4b28ab6554970c5d5018", false),
        ("g88cc94e-7a8f-4b28-ab65-54970c5d5018", false),
        ("988cc94e-7a8f-4b28-ab65-54970c5d50１8", false),
        ("", false),
    ])
    func guids(id: String, valid: Bool) {
        #expect(Identifier.isMachineActionID(id) == valid)
    }

    @Test("header names match case-insensitively, letters only", arguments: [
        ("Prefer", "prefer", true), ("MDEGATE-CLIENT", "Mdegate-Client", true), ("Prefer", "Prefe", false),
        ("Prefer", "Prefer ", false), ("a-b", "a\rb", false), ("[", "{", false), ("@", "`", false), ("x1", "X1", true),
    ])
    func headerNames(a: String, b: String, equal: Bool) {
        #expect(asciiCaseInsensitiveEqual(a, b) == equal)
        #expect(asciiCaseInsensitiveEqual(b, a) == equal)
    }

    @Test("the body must be a JSON object with a string Comment of at most 1,000 characters")
    func comments() throws {
        #expect(try parseActionBody(Array(#"{"Comment":"isolated by mistake"}"#.utf8)).get().comment == "isolated by mistake")
        #expect(try parseActionBody(Array(#"{"Comment":""}"#.utf8)).get().comment == "")
        #expect(try parseActionBody(Array(("{\"Comment\":\"" + String(repeating: "é", count: 1000) + "\"}").utf8)).get().comment.count == 1000)
        let refused: [String] = [
            "", "not json", "[]", "\"Comment\"", #"{"comment":"lowercase"}"#, #"{"Comment":5}"#, #"{"Comment":null}"#,
            #"{"Comment":["a"]}"#, "{\"Comment\":\"" + String(repeating: "x", count: 1001) + "\"}",
        ]
        for body in refused {
            #expect(throws: ValidationProblem.self, "\(body.prefix(40))") { try parseActionBody(Array(body.utf8)).get().comment }
        }
    }

    @Test("Prefer: respond-async wins over wait=N; wait is read in seconds")
    func preferences() {
        #expect(Preference("respond-async").respondAsync)
        #expect(Preference("wait=5").wait == .seconds(5))
        #expect(Preference("wait=0.5").wait == .milliseconds(500))
        #expect(Preference("respond-async, wait=10").respondAsync)
        #expect(Preference("wait=-1").wait == nil)
        #expect(Preference("wait=abc").wait == nil)
        #expect(Preference(nil).wait == nil && !Preference(nil).respondAsync)
    }

    @Test("client names are short and printable")
    func clientNames() throws {
        #expect(try parseClientName("soar-playbook").get() == "soar-playbook")
        #expect(try parseClientName(nil).get() == nil)
        #expect(try parseClientName("  ").get() == nil)
        #expect(throws: ValidationProblem.self) { try parseClientName("bad name with spaces").get() }
        #expect(throws: ValidationProblem.self) { try parseClientName(String(repeating: "a", count: 65)).get() }
    }

    @Test("Retry-After is read as delay-seconds or as an HTTP-date")
    func retryAfterForms() {
        #expect(retryAfter("120") == .seconds(120))
        #expect(retryAfter(" 0 ") == .zero)
        #expect(retryAfter(nil) == nil)
        #expect(retryAfter("soon") == nil)
        let now = Date(timeIntervalSince1970: 1_445_412_450)  // Wed, 21 Oct 2015 07:27:30 GMT
        #expect(retryAfter("Wed, 21 Oct 2015 07:28:00 GMT", now: now) == .seconds(30))
        #expect(retryAfter("Wed, 21 Oct 2015 07:27:00 GMT", now: now) == .zero)
    }
}
