import Foundation
import Histogram

/// A percentile-distribution chart in SVG, in the style of HdrHistogram's plotter: the x axis is
/// `1 / (1 − percentile)` on a log scale (0 %, 90 %, 99 %, 99.9 %, … equally spaced), the y axis is
/// latency in milliseconds; one line per target, all on the same axes.
enum LatencyPlot {
    struct Series {
        var name: String
        /// (x = log10(1 / (1 − p)), latency in ms)
        var points: [(x: Double, y: Double)]
        var p50: Double
        var p99: Double
    }

    static let palette = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"]

    /// The points of one histogram (microseconds): HdrHistogram's percentile iteration, 5 ticks per
    /// half distance; the 100 % point is placed at 1 − 1/count.
    static func series(name: String, histogram h: Histogram<UInt64>) -> Series? {
        guard h.totalCount > 0 else { return nil }
        let lastX = log10(Double(max(h.totalCount, 2)))
        var points: [(Double, Double)] = []
        for iv in h.percentiles(ticksPerHalfDistance: 5) {
            let p = iv.percentileLevelIteratedTo / 100
            let x = p >= 1 ? lastX : min(lastX, log10(1 / (1 - p)))
            points.append((x, Double(iv.value) / 1000))
        }
        points.append((lastX, Double(h.maxRecorded) / 1000))
        return Series(
            name: name, points: points, p50: Double(h.valueAtPercentile(50)) / 1000, p99: Double(h.valueAtPercentile(99)) / 1000)
    }

    /// A step that gives 4–8 ticks up to `maxValue`, from 1, 2, 5 × 10^n.
    static func niceStep(_ maxValue: Double) -> Double {
        guard maxValue > 0 else { return 1 }
        let raw = maxValue / 5
        let magnitude = pow(10, floor(log10(raw)))
        for m in [1.0, 2, 5, 10] where m * magnitude >= raw { return m * magnitude }
        return 10 * magnitude
    }

    static func percentileLabel(_ k: Int) -> String {
        // 1 − 10^−k as a percentage: 0%, 90%, 99%, 99.9%, 99.99%, …
        switch k {
        case ...0: return "0%"
        case 1: return "90%"
        case 2: return "99%"
        default: return "99." + String(repeating: "9", count: k - 2) + "%"
        }
    }

    static func escape(_ s: String) -> String {
        s.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;")
            .replacingOccurrences(of: ">", with: "&gt;").replacingOccurrences(of: "\"", with: "&quot;")
    }

    static func svg(_ series: [Series], title: String, subtitle: String = "") -> String {
        let width = 960.0
        let height = 540.0
        let left = 70.0
        let right = 250.0
        let top = 50.0
        let bottom = 60.0
        let plotW = width - left - right
        let plotH = height - top - bottom
        let maxX = max(2, ceil(series.flatMap { $0.points.map(\.x) }.max() ?? 2))
        let maxYData = series.flatMap { $0.points.map(\.y) }.max() ?? 1
        let step = niceStep(maxYData)
        let maxY = max(step, ceil(maxYData / step) * step)
        func px(_ x: Double) -> Double { left + x / maxX * plotW }
        func py(_ y: Double) -> Double { top + plotH - y / maxY * plotH }
        func f(_ v: Double) -> String { String(format: "%.1f", v) }

        var s = """
            <svg xmlns="http://www.w3.org/2000/svg" width="\(Int(width))" height="\(Int(height))" \
            viewBox="0 0 \(Int(width)) \(Int(height))" font-family="sans-serif" font-size="12">
            <rect x="0" y="0" width="\(Int(width))" height="\(Int(height))" fill="white"/>
            <text x="\(f(left))" y="22" font-size="15" font-weight="bold">\(escape(title))</text>
            <text x="\(f(left))" y="40" font-size="11" fill="#555">\(escape(subtitle))</text>

            """
        // Grid and axes.
        var y = 0.0
        while y <= maxY + step / 2 {
            s += "<line x1=\"\(f(left))\" y1=\"\(f(py(y)))\" x2=\"\(f(left + plotW))\" y2=\"\(f(py(y)))\" stroke=\"#e0e0e0\"/>\n"
            let label =
                step < 0.01
                ? String(format: "%.3f", y)
                : step < 0.1 ? String(format: "%.2f", y) : step < 1 ? String(format: "%.1f", y) : String(format: "%.0f", y)
            s += "<text x=\"\(f(left - 8))\" y=\"\(f(py(y) + 4))\" text-anchor=\"end\">\(label)</text>\n"
            y += step
        }
        for k in 0...Int(maxX) {
            let x = px(Double(k))
            s += "<line x1=\"\(f(x))\" y1=\"\(f(top))\" x2=\"\(f(x))\" y2=\"\(f(top + plotH))\" stroke=\"#e0e0e0\"/>\n"
            s += "<text x=\"\(f(x))\" y=\"\(f(top + plotH + 18))\" text-anchor=\"middle\">\(percentileLabel(k))</text>\n"
        }
        s += "<rect x=\"\(f(left))\" y=\"\(f(top))\" width=\"\(f(plotW))\" height=\"\(f(plotH))\" fill=\"none\" stroke=\"#444\"/>\n"
        s += "<text x=\"\(f(left + plotW / 2))\" y=\"\(f(height - 15))\" text-anchor=\"middle\">percentile</text>\n"
        s +=
            "<text x=\"18\" y=\"\(f(top + plotH / 2))\" text-anchor=\"middle\" "
            + "transform=\"rotate(-90 18 \(f(top + plotH / 2)))\">latency (ms)</text>\n"
        // Series and legend.
        for (i, ser) in series.enumerated() {
            let color = palette[i % palette.count]
            let pts = ser.points.map { "\(f(px($0.x))),\(f(py($0.y)))" }.joined(separator: " ")
            s += "<polyline fill=\"none\" stroke=\"\(color)\" stroke-width=\"2\" points=\"\(pts)\"/>\n"
            let ly = top + 10 + Double(i) * 40
            let lx = left + plotW + 20
            s += "<line x1=\"\(f(lx))\" y1=\"\(f(ly))\" x2=\"\(f(lx + 24))\" y2=\"\(f(ly))\" stroke=\"\(color)\" stroke-width=\"3\"/>\n"
            s += "<text x=\"\(f(lx + 32))\" y=\"\(f(ly + 4))\">\(escape(ser.name))</text>\n"
            s +=
                "<text x=\"\(f(lx + 32))\" y=\"\(f(ly + 20))\" fill=\"#555\" font-size=\"11\">p50 "
                + "\(String(format: "%.3f", ser.p50)) ms, p99 \(String(format: "%.3f", ser.p99)) ms</text>\n"
        }
        s += "</svg>\n"
        return s
    }
}
