/// A small random number generator whose whole state is one 64-bit word.
///
/// The simulator draws every injected fault from one of these, so `--seed N` replays the same
/// sequence of faults for the same sequence of requests. The machine action factory uses it too, to
/// derive stable details (type, machine id, host name) from an id.
struct SplitMix64: RandomNumberGenerator, Sendable {
    private var state: UInt64

    init(seed: UInt64) {
        self.state = seed
    }

    mutating func next() -> UInt64 {
        self.state &+= 0x9E37_79B9_7F4A_7C15
        var z = self.state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// A generator seeded from a string, the same in every process (Swift's `Hasher` is not:
    /// it is seeded randomly per process). FNV-1a over the UTF-8 bytes.
    init(deriving text: some StringProtocol) {
        var hash: UInt64 = 0xCBF2_9CE4_8422_2325
        for byte in text.utf8 {
            hash = (hash ^ UInt64(byte)) &* 0x0000_0100_0000_01B3
        }
        self.init(seed: hash)
    }
}
