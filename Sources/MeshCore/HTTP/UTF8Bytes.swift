extension String {
    /// `body` on the string's UTF-8 bytes where they are (a stack copy for a small string).
    /// Borrowed: `String.withUTF8` is mutating, so a `let` string needs a copy first (a retain and a
    /// release where the optimiser keeps them). Every native or small string has contiguous UTF-8;
    /// only a bridged one takes the copy.
    @inlinable
    public func meshWithUTF8<R>(_ body: (UnsafeBufferPointer<UInt8>) throws -> R) rethrows -> R {
        if let result = try utf8.withContiguousStorageIfAvailable(body) { return result }
        var copy = self
        return try copy.withUTF8(body)
    }
}

extension Substring {
    /// `String.meshWithUTF8` for a slice: `body` on its UTF-8 bytes where they are.
    @inlinable
    public func meshWithUTF8<R>(_ body: (UnsafeBufferPointer<UInt8>) throws -> R) rethrows -> R {
        if let result = try utf8.withContiguousStorageIfAvailable(body) { return result }
        var copy = self
        return try copy.withUTF8(body)
    }
}
