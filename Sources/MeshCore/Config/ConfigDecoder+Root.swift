import Yams

extension Decoder {
    mutating func decodeRoot(_ root: Node, into config: inout MeshConfig) {
        if case .scalar(let s) = root, s.string.isEmpty { return }  // an empty document
        decode(root, "", ConfigKeys.root, into: &config)
    }
}
