import Foundation
import Testing

/// `docs/openapi.yaml` is the local API's contract for people and client generators. These tests
/// keep it true: the document is valid OpenAPI 3.1, and schemathesis, generating requests from it
/// (valid and invalid), finds no answer of the real daemon that the document does not describe.
@Suite("OpenAPI contract: docs/openapi.yaml and the daemon agree", .timeLimit(.minutes(5)))
struct OpenAPIContractTests {
    static let document = ExternalTools.packageRoot.appendingPathComponent("docs/openapi.yaml").path

    /// What schemathesis checks on every answer (the names of schemathesis 4.32).
    static let checks = [
        "not_a_server_error", "status_code_conformance", "content_type_conformance",
        "response_headers_conformance", "response_schema_conformance",
    ]

    /// Every operation in the document: the run must have tested each one.
    static let operations = 16

    @Test("docs/openapi.yaml is a valid OpenAPI 3.1 document")
    func documentIsValid() async throws {
        let validator = try ExternalTools.openAPISpecValidator()
        try await sharingTheMachine {
            let directory = try TemporaryDirectory()
            defer { directory.remove() }
            let result = try await ExternalTools.run(validator, ["--schema", "3.1.0", Self.document], in: directory)
            #expect(result.exitCode == 0, "openapi-spec-validator:\n\(result.stdout)\n\(result.stderr)")
            #expect(result.stdout.contains("OK"), "openapi-spec-validator:\n\(result.stdout)\n\(result.stderr)")
        }
    }

    @Test("schemathesis finds no status, header, content type or body of the real daemon that the document does not describe")
    func daemonConformsToDocument() async throws {
        let schemathesis = try ExternalTools.schemathesis()
        var options = GatewayOptions()
        // Valid calls reach the simulator: nothing may wait for a slot, so that no generated
        // call blocks and the run stays short.
        options.limits = ["100000/1s"]
        options.logLevel = "info"
        try await withRig(gateway: options) { rig in
            try await withUnixSocketBridge(to: rig.gateway.socketPath) { bridge in
                let directory = try TemporaryDirectory()
                defer { directory.remove() }
                let arguments = [
                    "run", Self.document, "--url", bridge.url,
                    "--checks", Self.checks.joined(separator: ","),
                    "--phases", "examples,coverage,fuzzing,stateful",
                    "--max-examples", "8", "--seed", "20261203", "--generation-database", "none",
                    // One worker: Debian 12's Python 3.11.2 fails parsing in several threads at once
                    // ("AST constructor recursion depth mismatch" inside hypothesis).
                    "--workers", "1", "--request-timeout", "20", "--max-failures", "20",
                    "--suppress-health-check", "too_slow", "--no-color",
                ]
                let result = try await ExternalTools.run(schemathesis, arguments, in: directory, timeout: .seconds(180))
                let output = "schemathesis \(arguments.joined(separator: " "))\n\(result.stdout)\n\(result.stderr)"
                #expect(result.exitCode == 0, "\(output)")
                #expect(
                    result.stdout.contains("Selected: \(Self.operations)/\(Self.operations)")
                        && result.stdout.contains("Tested: \(Self.operations)"),
                    "every operation of the document was tested:\n\(output)")

                // The run reached the upstream through the daemon, on more than one route.
                let stats = try await rig.simulator.stats()
                let routes = stats.byApi.filter { $0.value.arrivals > 0 }.keys.sorted()
                #expect(routes.count >= 5, "calls reached the simulator for only \(routes) (\(stats))")
                #expect(bridge.accepted > 0)
            }
        }
    }
}
