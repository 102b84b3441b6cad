import Testing
@Test func placeholderMeshd() {}
