// Line charts drawn as SVG by hand: axes, series, a hover readout and optional smoothing.
import { el, svg } from "./lib.js";

const MARGIN = { left: 60, right: 16, top: 14, bottom: 40 };
// TensorBoard's kind of smoothing: an exponential moving average, debiased at the start.
export const SMOOTHING_WEIGHT = 0.6;
// More points than this are thinned for drawing (the readout still uses every point).
const MAX_DRAWN = 1500;

export function smooth(points, weight = SMOOTHING_WEIGHT) {
  let average = 0;
  return points.map(([x, y], i) => {
    average = average * weight + (1 - weight) * y;
    return [x, average / (1 - weight ** (i + 1))];
  });
}

function niceTicks(lo, hi, count, integer = false) {
  const span = hi - lo || 1;
  const raw = integer ? Math.max(1, span / count) : span / count;
  const magnitude = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * magnitude).find((s) => s >= raw);
  const ticks = [];
  for (let t = Math.ceil(lo / step) * step; t <= hi + step * 1e-9; t += step) ticks.push(t);
  return { ticks, step };
}

function thin(points) {
  if (points.length <= MAX_DRAWN) return points;
  const every = Math.ceil(points.length / MAX_DRAWN);
  return points.filter((_, i) => i % every === 0 || i === points.length - 1);
}

function containerWidth(node) {
  return Math.round(node.clientWidth || node.getBoundingClientRect().width || 720);
}

function nearest(sorted, value) {
  // Binary search for the element of sorted closest to value.
  let lo = 0;
  let hi = sorted.length - 1;
  while (hi - lo > 1) {
    const mid = (lo + hi) >> 1;
    if (sorted[mid] < value) lo = mid;
    else hi = mid;
  }
  return Math.abs(sorted[lo] - value) <= Math.abs(sorted[hi] - value) ? sorted[lo] : sorted[hi];
}

export class LineChart {
  // options: label (aria), yLabel, format and axisFormat (value -> text), height, zeroBased.
  constructor(container, options) {
    this.container = container;
    this.options = { height: 300, format: (v) => v.toFixed(4), zeroBased: false, ...options };
    this.series = [];
    this.smoothing = false;
    this.hoverStep = null;
    this.width = 0;
    this.legendBox = el("div", { class: "chart-legend" });
    this.tooltip = el("div", { class: "chart-tooltip", hidden: true, role: "status" });
    this.root = svg("svg", { role: "img", "aria-label": this.options.label });
    this.root.addEventListener("pointermove", (event) => this.hover(event));
    this.root.addEventListener("pointerdown", (event) => this.hover(event));
    this.root.addEventListener("pointerleave", () => this.hover(null));
    container.replaceChildren(this.legendBox, this.root, this.tooltip);
    // Drawn at the container's own pixel width, so text is the same size in every chart.
    new ResizeObserver(() => {
      if (Math.abs(container.clientWidth - this.width) > 1) this.draw();
    }).observe(container);
  }

  // series: [{name, cls, points: [[step, value], ...], dots, smoothable}]
  update(series) {
    this.series = series.map((s) => ({ ...s, points: s.points.filter(([, v]) => Number.isFinite(v)) }));
    this.draw();
  }

  setSmoothing(on) {
    this.smoothing = on;
    this.draw();
  }

  shown(s) {
    return this.smoothing && s.smoothable ? smooth(s.points) : s.points;
  }

  draw() {
    const width = Math.max(260, containerWidth(this.container));
    const height = Math.round(Math.min(this.options.height, Math.max(180, width * 0.55)));
    this.width = width;
    this.height = height;
    this.root.setAttribute("viewBox", `0 0 ${width} ${height}`);
    const all = this.series.flatMap((s) => s.points);
    this.root.replaceChildren();
    this.legendBox.replaceChildren(...this.legend());
    this.steps = [...new Set(all.map(([x]) => x))].sort((a, b) => a - b);
    if (all.length === 0) {
      this.root.append(svg("text", { x: width / 2, y: height / 2, "text-anchor": "middle" }, "No data yet"));
      this.tooltip.hidden = true;
      return;
    }
    const maxStep = Math.max(1, ...this.steps);
    let lo = Math.min(...all.map(([, v]) => v));
    let hi = Math.max(...all.map(([, v]) => v));
    if (this.options.zeroBased) lo = Math.min(0, lo);
    if (hi - lo < 1e-12) {
      // A flat line: give it room; a zero-based one (all zeros, say) stays above zero.
      const pad = Math.abs(hi) * 0.1 || 0.5;
      if (!this.options.zeroBased) lo -= pad;
      hi += this.options.zeroBased && hi === 0 ? 1 : pad;
    }
    const pad = (hi - lo) * 0.05;
    if (!this.options.zeroBased || lo < 0) lo -= pad;
    hi += pad;
    const x = (s) => MARGIN.left + (s / maxStep) * (width - MARGIN.left - MARGIN.right);
    const y = (v) => height - MARGIN.bottom - ((v - lo) / (hi - lo)) * (height - MARGIN.top - MARGIN.bottom);
    this.scale = { x, y, maxStep };
    this.root.append(this.axes(x, y, lo, hi, maxStep, width, height));
    for (const s of this.series) {
      if (this.smoothing && s.smoothable) this.root.append(this.line(s.points, `${s.cls} raw`, x, y));
      this.root.append(this.line(this.shown(s), s.cls, x, y));
      if (s.dots) {
        for (const [step, v] of s.points) {
          this.root.append(svg("circle", { cx: x(step), cy: y(v), r: 3.5, class: `dot ${s.cls}` }));
        }
      }
    }
    this.overlay = svg("g", { class: "hover" });
    this.root.append(this.overlay);
    this.renderHover();
  }

  line(points, cls, x, y) {
    const coords = thin(points).map(([s, v]) => `${x(s).toFixed(1)},${y(v).toFixed(1)}`);
    return svg("polyline", { class: `series ${cls}`, points: coords.join(" ") });
  }

  axes(x, y, lo, hi, maxStep, width, height) {
    const { yLabel, axisFormat } = this.options;
    const g = svg("g", { class: "axes" });
    for (const t of niceTicks(0, maxStep, Math.max(3, Math.round(width / 90)), true).ticks) {
      g.append(svg("line", { x1: x(t), x2: x(t), y1: MARGIN.top, y2: height - MARGIN.bottom, class: "grid" }));
      g.append(svg("text", { x: x(t), y: height - MARGIN.bottom + 16, "text-anchor": "middle" }, String(Math.round(t))));
    }
    const yTicks = niceTicks(lo, hi, Math.max(3, Math.round(height / 50)));
    const digits = Math.max(0, -Math.floor(Math.log10(yTicks.step)));
    for (const t of yTicks.ticks) {
      const text = axisFormat ? axisFormat(t) : t.toFixed(digits);
      g.append(svg("line", { x1: MARGIN.left, x2: width - MARGIN.right, y1: y(t), y2: y(t), class: "grid" }));
      g.append(svg("text", { x: MARGIN.left - 6, y: y(t) + 4, "text-anchor": "end" }, text));
    }
    const bottom = height - MARGIN.bottom;
    g.append(svg("line", { x1: MARGIN.left, x2: MARGIN.left, y1: MARGIN.top, y2: bottom, class: "axis" }));
    g.append(svg("line", { x1: MARGIN.left, x2: width - MARGIN.right, y1: bottom, y2: bottom, class: "axis" }));
    const middle = (MARGIN.top + bottom) / 2;
    g.append(svg("text", { x: (MARGIN.left + width - MARGIN.right) / 2, y: height - 6, "text-anchor": "middle", class: "label" }, "step"));
    g.append(svg("text", { x: 14, y: middle, "text-anchor": "middle", class: "label", transform: `rotate(-90 14 ${middle})` }, yLabel));
    return g;
  }

  legend() {
    return this.series
      .filter((s) => s.points.length > 0)
      .map((s) => el("span", { class: "legend-item" }, el("span", { class: `swatch ${s.cls}` }), s.name));
  }

  hover(event) {
    if (!event || !this.scale || this.steps.length === 0) {
      this.hoverStep = null;
    } else {
      const box = this.root.getBoundingClientRect();
      const vx = ((event.clientX - box.left) * this.width) / box.width;
      const inner = this.width - MARGIN.left - MARGIN.right;
      const step = ((vx - MARGIN.left) / inner) * this.scale.maxStep;
      this.hoverStep = nearest(this.steps, step);
      this.hoverX = event.clientX - box.left;
    }
    this.renderHover();
  }

  renderHover() {
    if (!this.overlay) return;
    this.overlay.replaceChildren();
    const step = this.hoverStep;
    if (step === null || !this.steps.includes(step)) {
      this.tooltip.hidden = true;
      return;
    }
    const { x, y } = this.scale;
    const { format } = this.options;
    const height = this.height;
    this.overlay.append(svg("line", { x1: x(step), x2: x(step), y1: MARGIN.top, y2: height - MARGIN.bottom, class: "crosshair" }));
    const rows = [el("div", { class: "tooltip-step" }, `step ${step}`)];
    for (const s of this.series) {
      const index = s.points.findIndex(([p]) => p === step);
      if (index < 0) continue;
      const raw = s.points[index][1];
      const drawn = this.smoothing && s.smoothable ? this.shown(s)[index][1] : raw;
      this.overlay.append(svg("circle", { cx: x(step), cy: y(drawn), r: 4.5, class: `marker ${s.cls}` }));
      const smoothed = drawn !== raw ? ` (smoothed ${format(drawn)})` : "";
      rows.push(el("div", { "data-series": s.cls }, el("span", { class: `swatch ${s.cls}` }), `${s.name} ${format(raw)}${smoothed}`));
    }
    this.tooltip.replaceChildren(...rows);
    this.tooltip.hidden = false;
    const box = this.root.getBoundingClientRect();
    const left = this.hoverX ?? (x(step) * box.width) / this.width;
    // Keep the readout inside the chart: to the left of the pointer near the right edge.
    const flip = left > box.width * 0.6;
    this.tooltip.style.left = flip ? "" : `${left + 14}px`;
    this.tooltip.style.right = flip ? `${box.width - left + 14}px` : "";
  }
}
