import CMeshSystem

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#elseif canImport(Darwin)
    import Darwin
#endif

/// Resident memory, CPU time and descriptors of this process (from /proc), and its heap (from the C
/// allocator: mallinfo2 walks every arena under its lock, so it is read per scrape, never per request).
enum ProcessStats {
    struct Sample {
        var rssBytes: Int = 0
        var cpuSeconds: Double = 0
        var openFDs: Int = 0
        var maxFDs: Int = 0
        /// Bytes the C allocator has handed out and not got back (glibc; 0 elsewhere).
        var heapInUse: Int = 0
        /// Free bytes the C allocator keeps for reuse instead of returning them to the system.
        var heapFree: Int = 0
    }

    /// When this process started (Unix seconds): taken when meshd's code first asks, at start.
    static let startTime: Double = {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
    }()

    static func read() -> Sample {
        var s = Sample()
        if let statm = try? readFile("/proc/self/statm") {
            let fields = statm.split(separator: " ")
            if fields.count > 1, let pages = Int(fields[1]) { s.rssBytes = pages * Int(sysconf(Int32(_SC_PAGESIZE))) }
        }
        var usage = rusage()
        if getrusage(RUSAGE_SELF_WHO, &usage) == 0 {
            s.cpuSeconds =
                Double(usage.ru_utime.tv_sec) + Double(usage.ru_utime.tv_usec) / 1e6 + Double(usage.ru_stime.tv_sec)
                + Double(usage.ru_stime.tv_usec) / 1e6
        }
        var limit = rlimit()
        if getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0 { s.maxFDs = Int(clamping: limit.rlim_cur) }
        if let dir = opendir("/proc/self/fd") {
            while readdir(dir) != nil { s.openFDs += 1 }
            closedir(dir)
            s.openFDs = max(0, s.openFDs - 3)  // ., .. and the directory itself
        }
        var inUse = 0
        var free = 0
        if cmesh_heap_stats(&inUse, &free) != 0 {
            s.heapInUse = inUse
            s.heapFree = free
        }
        return s
    }
}

struct FileReadError: Error, CustomStringConvertible {
    var path: String
    var errno: Int32
    var detail: String?
    var description: String { "\(path): \(detail ?? String(cString: strerror(errno)))" }
}

/// Reads a whole (small) file, off the event loops: config files and /proc. A config file's text: a regular file (or a symlink to one) of at most 16 MiB. Opened without
/// blocking, so a FIFO or device named by mistake is refused instead of waiting forever.
func readFile(_ path: String) throws -> String {
    let fd = open(path, O_RDONLY | O_NONBLOCK)
    guard fd >= 0 else { throw FileReadError(path: path, errno: errno) }
    defer { close(fd) }
    var info = stat()
    guard fstat(fd, &info) == 0 else { throw FileReadError(path: path, errno: errno) }
    guard info.st_mode & S_IFMT == S_IFREG else { throw FileReadError(path: path, errno: EINVAL, detail: "not a regular file") }
    var bytes: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 65536)
    while true {
        let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, 65536) }
        if n < 0 { throw FileReadError(path: path, errno: errno) }
        if n == 0 { break }
        bytes.append(contentsOf: chunk[0..<n])
        if bytes.count > 16 << 20 { throw FileReadError(path: path, errno: EFBIG) }
    }
    return String(decoding: bytes, as: UTF8.self)
}

extension String {
    func trimmingCharacters(in set: String) -> String {
        var s = Substring(self)
        while let f = s.first, set.contains(f) { s = s.dropFirst() }
        while let l = s.last, set.contains(l) { s = s.dropLast() }
        return String(s)
    }
}

#if canImport(Glibc)
    let RUSAGE_SELF_WHO = __rusage_who_t(RUSAGE_SELF.rawValue)
#else
    let RUSAGE_SELF_WHO = RUSAGE_SELF
#endif
