import MDEGateConfig
import MDEGateCore
import Testing

@Suite("quota.apis: limits of single upstream APIs")
struct APILimitTests {
    @Test("an API named under quota.apis gets its own limits; the others keep quota.limits")
    func override() throws {
        let configuration = try load(
            """
            quota:
              limits: ["100/1m", "1500/1h"]
              apis:
                isolate: ["50/1m"]
                get_machine_action: "10/1s, 600/1m"
            """
        ).configuration
        #expect(configuration.quota.apis.mapValues { $0.map(\.spec) } == ["isolate": ["50/1m"], "get_machine_action": ["10/1s", "600/1m"]])
        #expect(configuration.quota.limits.map(\.spec) == ["100/1m", "1500/1h"])
    }

    @Test("MDEGATE_QUOTA_APIS_<NAME> overrides the file, as every key's variable does")
    func environment() throws {
        let configuration = try load(
            "quota:\n  apis:\n    cancel: [\"5/1s\"]\n",
            environment: tokenFileOnly.merging(["MDEGATE_QUOTA_APIS_CANCEL": "7/1s,70/1m"]) { $1 }
        ).configuration
        #expect(configuration.quota.apis["cancel"]?.map(\.spec) == ["7/1s", "70/1m"])
    }

    @Test("a bad limit names its key and index; an empty list is refused")
    func invalid() throws {
        let bad = refusal("quota:\n  apis:\n    isolate: [\"50/1m\", \"5/0s\"]\n")
        #expect(bad?.problems.map(\.key) == ["quota.apis.isolate[1]"])
        let empty = refusal("quota:\n  apis:\n    isolate: []\n")
        #expect(empty?.problems.map(\.key) == ["quota.apis.isolate"])
    }

    @Test("an API name that does not exist is warned about with the likely one, and changes nothing")
    func unknownAPI() throws {
        let loaded = try load("quota:\n  apis:\n    isolation: [\"1/1s\"]\n")
        #expect(loaded.warnings == ["unknown key 'quota.apis.isolation' (did you mean 'quota.apis.isolate'?)"])
        #expect(loaded.configuration.quota.apis.isEmpty)
        #expect(try load("quota:\n  apis: {}\n").warnings.isEmpty, "the documented empty mapping is no typo")
    }

    @Test("check-config renders only the overrides, and loading the rendering gives the same configuration")
    func rendering() throws {
        let configuration = try load("quota:\n  apis:\n    stop_and_quarantine_file: [\"3/1s\"]\n").configuration
        let rendered = configuration.renderedYAML()
        #expect(rendered.contains("  apis:\n    stop_and_quarantine_file: [\"3/1s\"]\nretry:"))
        #expect(try load(rendered, environment: [:]).configuration == configuration)
        #expect(try load(nil).configuration.renderedYAML().contains("  apis: {}\n"))
    }
}
