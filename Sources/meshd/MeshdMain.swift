import MeshProxy

/// meshd is the MeshProxy library (listeners, HTTP, upstream pools, TCP, admin, telemetry, runtime)
/// behind its command line.
@main
enum MeshdMain {
    static func main() async {
        await Meshd.start()
    }
}
