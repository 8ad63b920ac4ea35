"""Loss curves drawn by hand: an SVG document, and a PNG from a tiny rasteriser."""

import struct
import zlib
from dataclasses import dataclass
from xml.sax.saxutils import escape

WIDTH, HEIGHT = 640, 360
LEFT, RIGHT, TOP, BOTTOM = 64, 20, 36, 48  # margins: room for tick labels and axis titles
SERIES_COLORS = {"train_loss": (31, 119, 180), "valid_loss": (255, 127, 14)}
SERIES_LABELS = {"train_loss": "train loss", "valid_loss": "validation loss"}

Point = tuple[float, float]


@dataclass(frozen=True)
class Frame:
    """Data bounds mapped onto the plot area in pixels."""

    x_min: float
    x_max: float
    y_min: float
    y_max: float

    def to_pixels(self, x: float, y: float) -> tuple[float, float]:
        """Data (step, loss) to image coordinates (y grows downwards)."""
        plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
        px = LEFT + (x - self.x_min) / (self.x_max - self.x_min) * plot_w
        py = TOP + (1 - (y - self.y_min) / (self.y_max - self.y_min)) * plot_h
        return px, py


def frame_for(series: dict[str, list[Point]]) -> Frame:
    """Bounds covering every point, padded so flat or single-point series still draw."""
    points = [p for values in series.values() for p in values] or [(0.0, 0.0)]
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x_min, x_max, y_min, y_max = min(xs), max(xs), min(ys), max(ys)
    if x_max == x_min:
        x_min, x_max = x_min - 1, x_max + 1
    pad = (y_max - y_min) * 0.05 or 0.5
    return Frame(x_min, x_max, y_min - pad, y_max + pad)


def loss_series(points: list[dict]) -> dict[str, list[Point]]:
    """(step, loss) pairs of each loss column that has any values."""
    series: dict[str, list[Point]] = {}
    for name in SERIES_COLORS:
        values = [(float(p["step"]), float(p[name])) for p in points if p.get(name) is not None]
        if values:
            series[name] = values
    return series


def _ticks(low: float, high: float, count: int = 5) -> list[float]:
    return [low + (high - low) * i / (count - 1) for i in range(count)]


def _hex(color: tuple[int, int, int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*color)


def render_svg(points: list[dict], title: str) -> str:
    """Train and validation loss against step, with labelled axes, ticks and a legend."""
    series = loss_series(points)
    frame = frame_for(series)
    bottom, right = HEIGHT - BOTTOM, WIDTH - RIGHT
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="11">',
        f'<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>',
        f'<text x="{WIDTH / 2}" y="20" text-anchor="middle" font-size="13">{escape(title)}</text>',
        f'<line class="axis" x1="{LEFT}" y1="{bottom}" x2="{right}" y2="{bottom}" stroke="black"/>',
        f'<line class="axis" x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{bottom}" stroke="black"/>',
    ]
    for x in _ticks(frame.x_min, frame.x_max):
        px, _ = frame.to_pixels(x, frame.y_min)
        parts.append(f'<text x="{px:.1f}" y="{bottom + 15}" text-anchor="middle">{x:g}</text>')
    for y in _ticks(frame.y_min, frame.y_max):
        _, py = frame.to_pixels(frame.x_min, y)
        parts.append(f'<text x="{LEFT - 6}" y="{py + 4:.1f}" text-anchor="end">{y:.3g}</text>')
    parts.append(
        f'<text class="x-label" x="{(LEFT + right) / 2}" y="{HEIGHT - 10}" '
        'text-anchor="middle">step</text>'
    )
    parts.append(
        f'<text class="y-label" x="16" y="{(TOP + bottom) / 2}" text-anchor="middle" '
        f'transform="rotate(-90 16 {(TOP + bottom) / 2})">loss</text>'
    )
    for index, (name, values) in enumerate(series.items()):
        color = _hex(SERIES_COLORS[name])
        coords = " ".join("{:.1f},{:.1f}".format(*frame.to_pixels(x, y)) for x, y in values)
        parts.append(
            f'<polyline class="{name}" fill="none" stroke="{color}" stroke-width="1.5" '
            f'points="{coords}"/>'
        )
        ly = TOP + 8 + 16 * index
        parts.append(
            f'<g class="legend"><line x1="{right - 130}" y1="{ly}" x2="{right - 110}" y2="{ly}" '
            f'stroke="{color}" stroke-width="2"/><text x="{right - 104}" y="{ly + 4}">'
            f"{SERIES_LABELS[name]}</text></g>"
        )
    parts.append("</svg>")
    return "\n".join(parts)


class Canvas:
    """An RGB pixel buffer with just enough drawing for a line chart."""

    def __init__(self, width: int, height: int) -> None:
        self.width, self.height = width, height
        self.pixels = bytearray(b"\xff" * (width * height * 3))

    def dot(self, x: int, y: int, color: tuple[int, int, int]) -> None:
        """Set one pixel, ignoring anything off the canvas."""
        if 0 <= x < self.width and 0 <= y < self.height:
            at = (y * self.width + x) * 3
            self.pixels[at : at + 3] = bytes(color)

    def line(self, start: Point, end: Point, color: tuple[int, int, int], width: int = 1) -> None:
        """Bresenham's line, thickened by width pixels."""
        x0, y0, x1, y1 = round(start[0]), round(start[1]), round(end[0]), round(end[1])
        dx, dy = abs(x1 - x0), -abs(y1 - y0)
        sx, sy = (1 if x0 < x1 else -1), (1 if y0 < y1 else -1)
        error = dx + dy
        while True:
            for ox in range(width):
                for oy in range(width):
                    self.dot(x0 + ox, y0 + oy, color)
            if x0 == x1 and y0 == y1:
                return
            double = 2 * error
            if double >= dy:
                error, x0 = error + dy, x0 + sx
            if double <= dx:
                error, y0 = error + dx, y0 + sy

    def png(self) -> bytes:
        """The canvas as a PNG file (8-bit RGB, zlib-compressed, no filtering)."""
        row = self.width * 3
        raw = b"".join(
            b"\x00" + bytes(self.pixels[y * row : (y + 1) * row]) for y in range(self.height)
        )
        header = struct.pack(">IIBBBBB", self.width, self.height, 8, 2, 0, 0, 0)
        return (
            b"\x89PNG\r\n\x1a\n"
            + _chunk(b"IHDR", header)
            + _chunk(b"IDAT", zlib.compress(raw, 6))
            + _chunk(b"IEND", b"")
        )


def _chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def render_png(points: list[dict]) -> bytes:
    """The same chart as render_svg, as PNG: axes, tick marks, loss lines, legend swatches."""
    series = loss_series(points)
    frame = frame_for(series)
    canvas = Canvas(WIDTH, HEIGHT)
    black, grey = (0, 0, 0), (200, 200, 200)
    bottom, right = HEIGHT - BOTTOM, WIDTH - RIGHT
    for x in _ticks(frame.x_min, frame.x_max):
        px, _ = frame.to_pixels(x, frame.y_min)
        canvas.line((px, TOP), (px, bottom), grey)
    for y in _ticks(frame.y_min, frame.y_max):
        _, py = frame.to_pixels(frame.x_min, y)
        canvas.line((LEFT, py), (right, py), grey)
    canvas.line((LEFT, bottom), (right, bottom), black)
    canvas.line((LEFT, TOP), (LEFT, bottom), black)
    for index, (name, values) in enumerate(series.items()):
        color = SERIES_COLORS[name]
        pixels = [frame.to_pixels(x, y) for x, y in values]
        for start, end in zip(pixels, pixels[1:], strict=False):
            canvas.line(start, end, color, width=2)
        if len(pixels) == 1:
            canvas.line(pixels[0], pixels[0], color, width=3)
        ly = TOP + 8 + 16 * index
        canvas.line((right - 130, ly), (right - 110, ly), color, width=3)
    return canvas.png()
