import Foundation
import MDEGateCore
import NIOCore

/// The MachineAction entity, as MDE's machine-action APIs return it (the POSTs on a machine, cancel,
/// get, and each element of the listing's `value`).
///
/// Encoded by hand so that absent values are written as `null`, as the upstream does, instead of
/// being left out (synthesized `Encodable` skips nil optionals).
struct MachineAction: Encodable, Sendable {
    /// The file of a StopAndQuarantineFile action.
    struct RelatedFileInfo: Encodable, Sendable {
        var fileIdentifier: String
        var fileIdentifierType: String
    }

    var id: String
    var type: String
    var title: String?
    var requestor: String
    var requestorComment: String
    var status: String
    var machineId: String
    var computerDnsName: String
    var creationDateTimeUtc: String
    var lastUpdateDateTimeUtc: String
    var cancellationRequestor: String?
    var cancellationComment: String?
    var cancellationDateTimeUtc: String?
    var errorHResult: Int
    var scope: String?
    var externalId: String?
    var requestSource: String
    var relatedFileInfo: RelatedFileInfo? = nil
    /// Whether to write `@odata.context`: a single entity has it, the elements of a listing do not.
    var includesContext = true

    private enum CodingKeys: String, CodingKey {
        case odataContext = "@odata.context"
        case id, type, title, requestor, requestorComment, status, machineId, computerDnsName
        case creationDateTimeUtc, lastUpdateDateTimeUtc, cancellationRequestor, cancellationComment
        case cancellationDateTimeUtc, errorHResult, scope, externalId, requestSource, relatedFileInfo
        case commands, troubleshootInfo
    }

    func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        if self.includesContext {
            try container.encode(
                "https://api.securitycenter.microsoft.com/api/$metadata#MachineActions/$entity",
                forKey: .odataContext
            )
        }
        try container.encode(self.id, forKey: .id)
        try container.encode(self.type, forKey: .type)
        try container.encode(self.title, forKey: .title)
        try container.encode(self.requestor, forKey: .requestor)
        try container.encode(self.requestorComment, forKey: .requestorComment)
        try container.encode(self.status, forKey: .status)
        try container.encode(self.machineId, forKey: .machineId)
        try container.encode(self.computerDnsName, forKey: .computerDnsName)
        try container.encode(self.creationDateTimeUtc, forKey: .creationDateTimeUtc)
        try container.encode(self.lastUpdateDateTimeUtc, forKey: .lastUpdateDateTimeUtc)
        try container.encode(self.cancellationRequestor, forKey: .cancellationRequestor)
        try container.encode(self.cancellationComment, forKey: .cancellationComment)
        try container.encode(self.cancellationDateTimeUtc, forKey: .cancellationDateTimeUtc)
        try container.encode(self.errorHResult, forKey: .errorHResult)
        try container.encode(self.scope, forKey: .scope)
        try container.encode(self.externalId, forKey: .externalId)
        try container.encode(self.requestSource, forKey: .requestSource)
        try container.encode(self.relatedFileInfo, forKey: .relatedFileInfo)
        try container.encode([String](), forKey: .commands)
        try container.encodeNil(forKey: .troubleshootInfo)
    }
}

/// `GET /api/machineactions`'s answer: the OData collection.
struct MachineActionList: Encodable, Sendable {
    var value: [MachineAction]

    private enum CodingKeys: String, CodingKey {
        case odataContext = "@odata.context"
        case value
    }

    func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode("https://api.securitycenter.microsoft.com/api/$metadata#MachineActions", forKey: .odataContext)
        try container.encode(self.value, forKey: .value)
    }
}

/// Builds the machine actions the simulator answers with.
///
/// Two kinds: the actions it created itself (`created`/`entity(_:)`, from `ActionStore`), and the
/// ones it "cancels" without ever having created them (`cancelledAction`), whose details are
/// derived from the id, so the same id always describes the same action (same type, machine,
/// host) across requests and runs, which keeps test output stable.
struct MachineActionFactory: Sendable {
    /// Who requests and who cancels: the application, as the upstream records for calls made with
    /// an app token.
    var cancellationRequestor: String

    private static let kinds: [(type: String, title: String, comment: String, scopes: [String?])] = [
        ("Isolate", "Isolate device", "Isolate device pending investigation of alert", ["Full", "Selective"]),
        ("Unisolate", "Release device from isolation", "Release after remediation", [nil]),
        ("RunAntiVirusScan", "Run antivirus scan", "Scan after suspicious download", ["Quick", "Full"]),
        ("CollectInvestigationPackage", "Collect investigation package", "Collect evidence for incident", [nil]),
        ("RestrictCodeExecution", "Restrict app execution", "Restrict execution during triage", [nil]),
        ("UnrestrictCodeExecution", "Remove app restriction", "Lift restriction after triage", [nil]),
        ("StopAndQuarantineFile", "Stop and quarantine file", "Quarantine malicious binary", [nil]),
    ]

    /// A new action for a POST on a machine: a fresh id, `requestor` the application.
    func created(
        type: String, scope: String?, comment: String, machineId: String, sha1: String?,
        at now: Timestamp, uptime: NIODeadline
    ) -> StoredAction {
        StoredAction(
            id: GUID.make(),
            type: type,
            scope: scope,
            requestor: self.cancellationRequestor,
            requestorComment: comment,
            machineId: machineId.lowercased(),
            computerDnsName: Self.computerDnsName(machineId: machineId),
            sha1: sha1?.lowercased(),
            created: now,
            createdUptime: uptime
        )
    }

    /// The entity of a created action in the state `snapshot` describes.
    func entity(_ snapshot: ActionSnapshot, includesContext: Bool = true) -> MachineAction {
        let action = snapshot.action
        return MachineAction(
            id: action.id,
            type: action.type,
            title: Self.kinds.first { $0.type == action.type }?.title,
            requestor: action.requestor,
            requestorComment: action.requestorComment,
            status: snapshot.status.rawValue,
            machineId: action.machineId,
            computerDnsName: action.computerDnsName,
            creationDateTimeUtc: action.created.iso8601,
            lastUpdateDateTimeUtc: snapshot.lastUpdate.iso8601,
            cancellationRequestor: action.cancellation?.requestor,
            cancellationComment: action.cancellation?.comment,
            cancellationDateTimeUtc: action.cancellation?.at.iso8601,
            errorHResult: 0,
            scope: action.scope,
            externalId: nil,
            requestSource: "PublicApi",
            relatedFileInfo: action.sha1.map { .init(fileIdentifier: $0, fileIdentifierType: "Sha1") },
            includesContext: includesContext
        )
    }

    /// A stable host name for a machine id.
    static func computerDnsName(machineId: String) -> String {
        var derived = SplitMix64(deriving: machineId.lowercased())
        return "desktop-" + hex(derived.next(), digits: 6) + ".contoso.local"
    }

    func cancelledAction(id: String, comment: String, at now: Timestamp) -> MachineAction {
        var derived = SplitMix64(deriving: id.lowercased())
        let kind = Self.kinds[Int(derived.next() % UInt64(Self.kinds.count))]
        let scope = kind.scopes[Int(derived.next() % UInt64(kind.scopes.count))]
        let machineId = (0..<3).map { _ in hex(derived.next(), digits: 16) }.joined().prefix(40)
        let host = "desktop-" + hex(derived.next(), digits: 6)
        let minutesAgo = 5 + Int64(derived.next() % 115)
        let created = now - .seconds(minutesAgo * 60) - .milliseconds(Int64(derived.next() % 1000))
        let analyst = ["alex", "sam", "kim", "jordan"][Int(derived.next() % 4)]
        return MachineAction(
            id: id,
            type: kind.type,
            title: kind.title,
            requestor: "\(analyst)@contoso.onmicrosoft.com",
            requestorComment: kind.comment,
            status: "Cancelled",
            machineId: String(machineId),
            computerDnsName: "\(host).contoso.local",
            creationDateTimeUtc: created.iso8601,
            lastUpdateDateTimeUtc: now.iso8601,
            cancellationRequestor: self.cancellationRequestor,
            cancellationComment: comment,
            cancellationDateTimeUtc: now.iso8601,
            errorHResult: 0,
            scope: scope,
            externalId: nil,
            requestSource: "PublicApi"
        )
    }
}

private func hex(_ value: UInt64, digits: Int) -> String {
    let text = String(value, radix: 16)
    let padded = String(repeating: "0", count: max(0, 16 - text.count)) + text
    return String(padded.prefix(digits))
}

extension Timestamp {
    /// The wall clock now. The core never reads clocks; the simulator, an edge, does.
    static func now() -> Timestamp {
        var spec = timespec()
        clock_gettime(CLOCK_REALTIME, &spec)
        return Timestamp(nanosecondsSinceEpoch: Int64(spec.tv_sec) * 1_000_000_000 + Int64(spec.tv_nsec))
    }

    /// ISO 8601 in UTC with seven fractional digits and `Z`, the way MDE writes its times
    /// (`2019-01-02T14:39:38.2262283Z`), so clients meet the real format offline.
    var iso8601: String {
        let nanoseconds = self.nanosecondsSinceEpoch
        var seconds = time_t(nanoseconds / 1_000_000_000)
        let ticks = Int((nanoseconds % 1_000_000_000) / 100)
        var parts = tm()
        gmtime_r(&seconds, &parts)
        return String(
            format: "%04d-%02d-%02dT%02d:%02d:%02d.%07dZ",
            Int(parts.tm_year) + 1900, Int(parts.tm_mon) + 1, Int(parts.tm_mday),
            Int(parts.tm_hour), Int(parts.tm_min), Int(parts.tm_sec), ticks
        )
    }
}

/// Machine action ids are GUIDs: 8-4-4-4-12 hexadecimal digits, either case.
enum GUID {
    static func isValid(_ text: some StringProtocol) -> Bool {
        let bytes = Array(text.utf8)
        guard bytes.count == 36 else { return false }
        for (index, byte) in bytes.enumerated() {
            if [8, 13, 18, 23].contains(index) {
                guard byte == UInt8(ascii: "-") else { return false }
            } else {
                guard (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte)
                    || (UInt8(ascii: "a")...UInt8(ascii: "f")).contains(byte | 0x20)
                else { return false }
            }
        }
        return true
    }

    /// A fresh lowercase GUID, used as the `target` of error answers (the upstream's correlation id).
    static func make() -> String {
        UUID().uuidString.lowercased()
    }
}
