import MeshCore

/// A YAML file as lines, edited by inserting lines and replacing spans; every line not touched is
/// written back byte for byte (comments included). Positions come from Yams' composed nodes
/// (`Mark`: 1-based line and column); block extents are found from indentation.
struct YAMLText {
    private(set) var lines: [String]
    /// The terminator of each line ("\n", "\r\n", or "" for a last line without one).
    private(set) var terminators: [String]
    /// The terminator used for inserted lines.
    let eol: String

    private enum Edit {
        /// Insert lines before line `at` (0-based; `lines.count` appends).
        case insert(at: Int, lines: [String])
        /// Replace the characters `from..<to` (Unicode scalar offsets) of one line.
        case replace(line: Int, from: Int, to: Int, with: String)

        var line: Int {
            switch self {
            case .insert(let at, _): return at
            case .replace(let line, _, _, _): return line
            }
        }
    }

    private var edits: [Edit] = []

    init(_ text: String) {
        var lines: [String] = []
        var terminators: [String] = []
        var current = ""
        var iterator = text.unicodeScalars.makeIterator()
        var pending: Unicode.Scalar? = nil
        while let c = pending ?? iterator.next() {
            pending = nil
            if c == "\n" {
                lines.append(current)
                terminators.append("\n")
                current = ""
            } else if c == "\r" {
                let next = iterator.next()
                if next == "\n" {
                    lines.append(current)
                    terminators.append("\r\n")
                    current = ""
                } else {
                    current.unicodeScalars.append(c)
                    pending = next
                }
            } else {
                current.unicodeScalars.append(c)
            }
        }
        if !current.isEmpty {
            lines.append(current)
            terminators.append("")
        }
        self.lines = lines
        self.terminators = terminators
        self.eol = terminators.first { !$0.isEmpty } ?? "\n"
    }

    var lineCount: Int { lines.count }

    func line(_ i: Int) -> String { lines[i] }

    /// Leading spaces of a line.
    func indent(_ i: Int) -> Int { lines[i].prefix { $0 == " " }.count }

    func content(_ i: Int) -> Substring { lines[i].drop { $0 == " " || $0 == "\t" } }

    func isBlank(_ i: Int) -> Bool { content(i).isEmpty }

    func isComment(_ i: Int) -> Bool { content(i).hasPrefix("#") }

    func isDocumentMarker(_ i: Int) -> Bool {
        let l = lines[i]
        return l == "---" || l.hasPrefix("--- ") || l.hasPrefix("---\t") || l == "..." || l.hasPrefix("... ")
    }

    func isSequenceEntry(_ i: Int) -> Bool {
        let c = content(i)
        return c == "-" || c.hasPrefix("- ") || c.hasPrefix("-\t")
    }

    /// The character at a 0-based Unicode-scalar column, if any.
    func character(line: Int, column: Int) -> Unicode.Scalar? {
        let scalars = lines[line].unicodeScalars
        guard column >= 0, column < scalars.count else { return nil }
        return scalars[scalars.index(scalars.startIndex, offsetBy: column)]
    }

    /// The last line of the block value of a key at (`keyLine`, `keyColumn`): the following lines
    /// indented deeper than the key, plus, when the value is a block sequence, its `- ` entries at the
    /// key's own indentation. Blank lines and comments not indented deeper than the key at the end of
    /// the block are not part of it (they usually belong to what follows).
    func lastLineOfValue(keyLine: Int, keyColumn: Int, sequence: Bool) -> Int {
        var last = keyLine
        var i = keyLine + 1
        while i < lines.count {
            defer { i += 1 }
            if isDocumentMarker(i) { break }
            if isBlank(i) { continue }
            let ind = indent(i)
            if isComment(i) && ind <= keyColumn { continue }
            if ind < keyColumn { break }
            if ind == keyColumn && !(sequence && isSequenceEntry(i)) { break }
            last = i
        }
        return last
    }

    /// The last line of a block mapping whose keys start at `column`, the first of them on `firstLine`.
    func lastLineOfMapping(firstLine: Int, column: Int) -> Int {
        var last = firstLine
        var i = firstLine + 1
        while i < lines.count {
            defer { i += 1 }
            if isDocumentMarker(i) { break }
            if isBlank(i) { continue }
            let ind = indent(i)
            if isComment(i) && ind < column { continue }
            if ind < column { break }
            last = i
        }
        return last
    }

    /// Inserts `newLines` before line `at` (0-based). Insertions at the same place keep their order.
    mutating func insert(_ newLines: [String], before at: Int) {
        edits.append(.insert(at: at, lines: newLines))
    }

    mutating func insert(_ newLines: [String], after line: Int) { insert(newLines, before: line + 1) }

    /// Replaces Unicode-scalar columns `from..<to` of `line`.
    mutating func replace(line: Int, from: Int, to: Int, with text: String) {
        edits.append(.replace(line: line, from: from, to: to, with: text))
    }

    var hasEdits: Bool { !edits.isEmpty }

    /// The text with every edit applied.
    func rendered() -> String {
        var lines = self.lines
        var terminators = self.terminators
        // Last position first, so earlier positions stay valid; among insertions at one position the
        // later one goes in first, so they end up in the order they were made.
        let ordered = edits.enumerated().sorted { a, b in
            a.element.line != b.element.line ? a.element.line > b.element.line : a.offset > b.offset
        }
        for (_, edit) in ordered {
            switch edit {
            case .replace(let line, let from, let to, let text):
                var scalars = Array(lines[line].unicodeScalars)
                scalars.replaceSubrange(from..<min(to, scalars.count), with: Array(text.unicodeScalars))
                var s = ""
                s.unicodeScalars.append(contentsOf: scalars)
                lines[line] = s
            case .insert(let at, let newLines):
                if at > 0 && at == lines.count && terminators[at - 1].isEmpty { terminators[at - 1] = eol }
                lines.insert(contentsOf: newLines, at: at)
                terminators.insert(contentsOf: Array(repeating: eol, count: newLines.count), at: at)
            }
        }
        var out = ""
        for (l, t) in zip(lines, terminators) {
            out += l
            out += t
        }
        return out
    }
}

/// A small ordered YAML tree for the text meshctl inserts, emitted in block style.
indirect enum YAMLValue {
    /// Written as is (numbers, booleans, known-safe words).
    case plain(String)
    /// A string: plain when that reads back as the same string, double-quoted otherwise.
    case string(String)
    /// A literal block scalar (`|`).
    case literal(String)
    case map([(String, YAMLValue)])
    case list([YAMLValue])
    /// A one-line flow sequence of strings: `["a", "b"]`.
    case flowList([String])

    static func pad(_ n: Int) -> String { String(repeating: " ", count: n) }

    /// Whether `s` can be written as a plain scalar and read back as the same string.
    static func isPlainSafe(_ s: String) -> Bool {
        guard let first = s.unicodeScalars.first, let last = s.unicodeScalars.last else { return false }
        let allowedFirst = Set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_/".unicodeScalars)
        let allowed = Set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_./:@-".unicodeScalars)
        guard allowedFirst.contains(first), last != ":", s.unicodeScalars.allSatisfy(allowed.contains) else { return false }
        let reserved: Set<String> = ["true", "false", "yes", "no", "on", "off", "null", "y", "n"]
        if reserved.contains(s.lowercased()) { return false }
        // Anything that could read back as a number (or a sexagesimal, or a date) is quoted.
        if s.unicodeScalars.allSatisfy({ "0123456789.:-_".unicodeScalars.contains($0) }) { return false }
        if Double(s) != nil || s.hasPrefix("0x") || s.hasPrefix("0o") { return false }
        return true
    }

    /// A double-quoted YAML scalar (written as a JSON string literal, which YAML reads the same).
    static func quoted(_ s: String) -> String { JSONValue.quoted(s) }

    static func scalarText(_ s: String) -> String { isPlainSafe(s) ? s : quoted(s) }

    /// The lines of a mapping's entries at `indent`; sequences put their `-` at `indent + sequenceOffset`.
    static func mappingLines(_ pairs: [(String, YAMLValue)], indent: Int, sequenceOffset: Int) -> [String] {
        var out: [String] = []
        for (key, value) in pairs {
            let head = pad(indent) + key + ":"
            switch value {
            case .plain(let s): out.append(head + " " + s)
            case .string(let s): out.append(head + " " + scalarText(s))
            case .flowList(let items): out.append(head + " [" + items.map(quoted).joined(separator: ", ") + "]")
            case .literal(let text):
                out.append(head + " |")
                for l in text.split(separator: "\n", omittingEmptySubsequences: false) {
                    out.append(l.isEmpty ? "" : pad(indent + 2) + l)
                }
            case .map(let inner):
                out.append(head)
                out += mappingLines(inner, indent: indent + 2, sequenceOffset: sequenceOffset)
            case .list(let items):
                out.append(head)
                for item in items { out += itemLines(item, dashColumn: indent + sequenceOffset, sequenceOffset: sequenceOffset) }
            }
        }
        return out
    }

    /// The lines of one sequence entry with its `-` at `dashColumn`.
    static func itemLines(_ item: YAMLValue, dashColumn: Int, sequenceOffset: Int) -> [String] {
        switch item {
        case .map(let pairs):
            var lines = mappingLines(pairs, indent: dashColumn + 2, sequenceOffset: sequenceOffset)
            if !lines.isEmpty { lines[0] = pad(dashColumn) + "- " + lines[0].dropFirst(dashColumn + 2) }
            return lines
        case .plain(let s): return [pad(dashColumn) + "- " + s]
        case .string(let s): return [pad(dashColumn) + "- " + scalarText(s)]
        case .flowList(let items): return [pad(dashColumn) + "- [" + items.map(quoted).joined(separator: ", ") + "]"]
        case .literal(let text):
            return [pad(dashColumn) + "- |"]
                + text.split(separator: "\n", omittingEmptySubsequences: false).map { $0.isEmpty ? "" : pad(dashColumn + 2) + $0 }
        case .list(let inner):
            return [pad(dashColumn) + "-"] + inner.flatMap { itemLines($0, dashColumn: dashColumn + 2, sequenceOffset: sequenceOffset) }
        }
    }
}
