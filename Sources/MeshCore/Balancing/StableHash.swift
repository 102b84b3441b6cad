/// A stable 64-bit hash (FNV-1a, then the MurmurHash3 finalizer for avalanche). Unlike `Hasher`, it is
/// the same in every process, so every meshd maps a key to the same endpoint.
public enum StableHash {
    @inlinable
    public static func hash(_ s: String) -> UInt64 { hash(utf8: s.utf8) }

    @inlinable
    public static func hash(utf8: some Sequence<UInt8>) -> UInt64 {
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        for b in utf8 {
            h ^= UInt64(b)
            h = h &* 0x0000_0100_0000_01b3
        }
        return mix(h)
    }

    /// MurmurHash3's fmix64.
    @inlinable
    public static func mix(_ x: UInt64) -> UInt64 {
        var k = x
        k ^= k >> 33
        k = k &* 0xff51_afd7_ed55_8ccd
        k ^= k >> 33
        k = k &* 0xc4ce_b9fe_1a85_ec53
        k ^= k >> 33
        return k
    }
}
