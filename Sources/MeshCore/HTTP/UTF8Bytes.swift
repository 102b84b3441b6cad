extension String {
    /// `body` on the string's UTF-8 bytes where they are (a stack copy for a small string).
    /// Borrowed, not copied: `String.withUTF8` is mutating, and the copy it needs of a field name or
    /// value costs a retain and a release — about 1 k instructions per proxied HTTP/1.1 request over
    /// its header comparisons (callgrind). Every native or small string has contiguous UTF-8; only a
    /// bridged one takes the copy.
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
