import MDEGateCore
import PropertyBased
import Testing

@Suite("SlotTable: a dictionary's behaviour in an array's memory")
struct SlotTableTests {
    @Test("any sequence of sets, updates and removals leaves the same contents as a Dictionary")
    func behavesLikeADictionary() async {
        // (key 0...19, value or removal): small keys so that updates, removals and reuse of
        // vacated positions all happen often.
        let operations = zip(Gen.int(in: 0...19), Gen.int(in: -5...100)).array(of: 0...200)
        await propertyCheck(count: 300, input: operations) { operations in
            var table = SlotTable<Int>()
            var reference: [String: Int] = [:]
            for (key, value) in operations {
                let name = "k\(key)"
                let newValue = value < 0 ? nil : value
                table[name] = newValue
                reference[name] = newValue
                #expect(table[name] == reference[name])
                #expect(table.count == reference.count)
            }
            for key in 0...19 { #expect(table["k\(key)"] == reference["k\(key)"]) }
            #expect(table.values.sorted() == reference.values.sorted())
            #expect(table.isEmpty == reference.isEmpty)
        }
    }

    @Test("a value is changed in place through optional chaining, and absent keys stay absent")
    func optionalChaining() {
        var table = SlotTable<[Int]>()
        table["a"] = [1]
        table["a"]?.append(2)
        table["b"]?.append(3)
        #expect(table["a"] == [1, 2])
        #expect(table["b"] == nil)
        #expect(table.count == 1)
    }
}
