"""The hand-drawn loss charts and the shared results CSV."""

import struct
import xml.etree.ElementTree as ET
import zlib

from api.charts import HEIGHT, WIDTH, render_png, render_svg
from shared.metrics_table import COLUMNS, metric_point, render_csv

SVG = "{http://www.w3.org/2000/svg}"


def points(count: int = 12) -> list[dict]:
    rows = []
    for step in range(1, count + 1):
        valid = 4.0 - step * 0.05 if step % 4 == 0 else None
        data = {"tokens_seen": step * 256, "tokens_per_second": 1000.0 + step}
        data["train_mean_token_accuracy"] = step / 100
        if valid is not None:
            data |= {"valid_perplexity": 2.0**valid, "valid_mean_token_accuracy": 0.25}
        rows.append(metric_point(step, step / count, 5.0 - step * 0.1, valid, 1e-4, data))
    return rows


def test_svg_has_one_vertex_per_metric_and_labelled_axes() -> None:
    root = ET.fromstring(render_svg(points(12), "job-1 loss"))
    lines = {p.get("class"): p.get("points", "").split() for p in root.iter(f"{SVG}polyline")}
    assert len(lines["train_loss"]) == 12
    assert len(lines["valid_loss"]) == 3
    texts = [t.text for t in root.iter(f"{SVG}text")]
    assert "step" in texts and "loss" in texts
    assert "train loss" in texts and "validation loss" in texts
    xs = [float(p.split(",")[0]) for p in lines["train_loss"]]
    assert xs == sorted(xs) and 0 <= xs[0] < xs[-1] <= WIDTH
    # Loss falls, so the curve descends on screen (SVG y grows downwards).
    ys = [float(p.split(",")[1]) for p in lines["train_loss"]]
    assert ys[0] < ys[-1]


def test_svg_of_a_job_without_metrics_is_still_a_document() -> None:
    root = ET.fromstring(render_svg([], "empty"))
    assert list(root.iter(f"{SVG}polyline")) == []


def test_png_is_a_valid_image_of_the_chart_size() -> None:
    data = render_png(points(30))
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    length, kind = struct.unpack(">I4s", data[8:16])
    assert kind == b"IHDR" and length == 13
    width, height, depth, color = struct.unpack(">IIBB", data[16:26])
    assert (width, height, depth, color) == (WIDTH, HEIGHT, 8, 2)
    assert zlib.crc32(data[12:29]) & 0xFFFFFFFF == struct.unpack(">I", data[29:33])[0]
    idat_at = data.index(b"IDAT")
    idat_len = struct.unpack(">I", data[idat_at - 4 : idat_at])[0]
    raw = zlib.decompress(data[idat_at + 4 : idat_at + 4 + idat_len])
    assert len(raw) == HEIGHT * (1 + WIDTH * 3)
    # Blue train-loss pixels were drawn.
    assert b"\x1f\x77\xb4" in raw
    assert data.endswith(b"IEND\xaeB`\x82")


def test_results_csv_has_the_header_and_one_row_per_step() -> None:
    text = render_csv(points(8))
    lines = text.splitlines()
    assert lines[0] == ",".join(COLUMNS)
    assert lines[0].startswith("step,epoch,train_loss,valid_loss")
    assert len(lines) == 9
    fourth = dict(zip(COLUMNS, lines[4].split(","), strict=True))
    assert fourth["step"] == "4" and float(fourth["valid_loss"]) == 3.8
    assert fourth["grad_norm"] == "" and fourth["tokens_seen"] == "1024"
    assert float(fourth["train_mean_token_accuracy"]) == 0.04
    assert dict(zip(COLUMNS, lines[1].split(","), strict=True))["valid_loss"] == ""
