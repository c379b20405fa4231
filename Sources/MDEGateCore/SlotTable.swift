/// A map from request id to a value, with an array's memory footprint.
///
/// A `Dictionary` keeps its values in its hash table, which it sizes to the power of two above
/// count / 0.75: at 100,000 entries that is 262,144 slots, so a 176-byte record costs 460 bytes
/// per entry. Here the values sit in one array (grown like any array) and only a small index of
/// id → position is hashed. Removed positions are reused. For the queue's big tables: records
/// and jobs, 100,000 of each at `queue.max_pending`.
public struct SlotTable<Value: Sendable>: Sendable {
    private var positions: [String: Int32] = [:]
    private var slots: ContiguousArray<Value?> = []
    private var vacant: [Int32] = []

    public init() {}

    public var count: Int { positions.count }
    public var isEmpty: Bool { positions.isEmpty }

    /// Every value, in no particular order.
    public var values: some Sequence<Value> { slots.lazy.compactMap { $0 } }

    public mutating func reserveCapacity(_ capacity: Int) {
        positions.reserveCapacity(capacity)
        slots.reserveCapacity(capacity)
    }

    public subscript(key: String) -> Value? {
        get { positions[key].flatMap { slots[Int($0)] } }
        set {
            if let position = positions[key] {
                guard let newValue else {
                    remove(key, at: position)
                    return
                }
                slots[Int(position)] = newValue
            } else if let newValue {
                insert(newValue, for: key)
            }
        }
    }

    private mutating func insert(_ value: Value, for key: String) {
        if let position = vacant.popLast() {
            slots[Int(position)] = value
            positions[key] = position
        } else {
            positions[key] = Int32(slots.count)
            slots.append(value)
        }
    }

    private mutating func remove(_ key: String, at position: Int32) {
        positions[key] = nil
        slots[Int(position)] = nil
        vacant.append(position)
        if positions.isEmpty {
            // Nothing left: give the memory of a drained queue back.
            slots = []
            vacant = []
        }
    }
}
