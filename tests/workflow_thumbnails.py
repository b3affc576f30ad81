"""Thumbnails for the template browser: one small JPEG beside each workflow, same stem.

ComfyUI's front end (1.35 and 1.49 read) lists a pack's templates from GET /workflow_templates (the file stems of
custom_nodes/<pack>/example_workflows/*.json), shows the stem as the title and loads the thumbnail from
/api/workflow_templates/<pack>/<stem>.jpg; without that file it shows a placeholder. The picture is the graph
itself (nodes, links, the bypassed LoRA dimmed), drawn from the saved workflow, so it stays true to the file:

    python tests/workflow_thumbnails.py     # rewrites every example_workflows/*.jpg
"""

from __future__ import annotations

import io
import json
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

WORKFLOWS_DIR = Path(__file__).resolve().parent.parent / "example_workflows"
SIZE = (512, 384)
MAX_BYTES = 40 * 1024
BACKGROUND, GRID = (32, 32, 36), (40, 40, 45)
LINK_COLOURS = {"MODEL": (180, 160, 255), "IMAGE": (100, 180, 220), "LATENT": (255, 150, 200),
                "CONDITIONING": (255, 200, 120), "VAE": (255, 100, 100), "MASK": (120, 220, 120)}
DEFAULT_LINK = (170, 170, 170)
PACK_PREFIX = "FluxRedux"


def node_colour(node: dict) -> tuple[int, int, int]:
    if node["type"] in ("Note", "MarkdownNote"):
        return (120, 110, 60)
    if node["type"].startswith(PACK_PREFIX):
        return (70, 60, 130) if "Remote" not in node["type"] else (40, 100, 120)
    return (55, 85, 60)  # ComfyUI's own nodes


def label(node: dict) -> str:
    return node.get("title") or {"FluxReduxLoadEncoder": "Load Redux Encoder", "FluxReduxLoadModel": "Load FLUX Model",
                                 "FluxReduxEncode": "Redux Encode", "FluxReduxEncodeAdvanced": "Redux Encode Adv.",
                                 "FluxReduxGenerate": "Redux Generate", "FluxReduxToConditioning": "Redux to Cond.",
                                 "FluxReduxRemoteVariation": "Redux (remote)", "FluxReduxPrompt": "Redux + Prompt",
                                 "FluxReduxCombine": "Redux Combine", "FluxReduxGenerateImg2Img": "Redux img2img",
                                 "FluxReduxVariation": "Redux Variation"}.get(node["type"], node["type"])


def render(ui: dict) -> Image.Image:
    nodes = {n["id"]: n for n in ui["nodes"]}
    left = min(n["pos"][0] for n in nodes.values())
    top = min(n["pos"][1] for n in nodes.values())
    right = max(n["pos"][0] + n["size"][0] for n in nodes.values())
    bottom = max(n["pos"][1] + n["size"][1] for n in nodes.values())
    margin = 14
    scale = min((SIZE[0] - 2 * margin) / (right - left), (SIZE[1] - 2 * margin) / (bottom - top))
    offset = ((SIZE[0] - (right - left) * scale) / 2, (SIZE[1] - (bottom - top) * scale) / 2)

    def at(x: float, y: float) -> tuple[float, float]:
        return offset[0] + (x - left) * scale, offset[1] + (y - top) * scale

    image = Image.new("RGB", SIZE, BACKGROUND)
    draw = ImageDraw.Draw(image)
    for x in range(0, SIZE[0], 24):
        draw.line([(x, 0), (x, SIZE[1])], fill=GRID)
    for y in range(0, SIZE[1], 24):
        draw.line([(0, y), (SIZE[0], y)], fill=GRID)
    for _, source, out_slot, target, in_slot, kind in ui["links"]:
        a, b = nodes[source], nodes[target]
        start = at(a["pos"][0] + a["size"][0], a["pos"][1] + 20 + 20 * out_slot)
        end = at(b["pos"][0], b["pos"][1] + 20 + 20 * in_slot)
        bend = max(20.0, abs(end[0] - start[0]) / 2)
        points = [_bezier(start, (start[0] + bend, start[1]), (end[0] - bend, end[1]), end, t / 24) for t in range(25)]
        draw.line(points, fill=LINK_COLOURS.get(kind, DEFAULT_LINK), width=2)
    font = ImageFont.load_default(size=max(9, min(14, round(22 * scale * 2.5))))
    for node in nodes.values():
        x0, y0 = at(*node["pos"])
        x1, y1 = at(node["pos"][0] + node["size"][0], node["pos"][1] + node["size"][1])
        colour = node_colour(node)
        bypassed = node.get("mode", 0) == 4
        fill = tuple(c // 2 + 40 for c in (150, 60, 170)) if bypassed else colour
        draw.rounded_rectangle([x0, y0, x1, max(y1, y0 + 16)], radius=4, fill=fill,
                               outline=(200, 120, 220) if bypassed else tuple(min(255, c + 50) for c in colour))
        draw.text((x0 + 4, y0 + 3), _fit(draw, label(node), font, x1 - x0 - 8), fill=(235, 235, 235), font=font)
    return image


def _bezier(p0, p1, p2, p3, t):
    u = 1 - t
    return tuple(u ** 3 * a + 3 * u * u * t * b + 3 * u * t * t * c + t ** 3 * d for a, b, c, d in zip(p0, p1, p2, p3))


def _fit(draw: ImageDraw.ImageDraw, text: str, font, width: float) -> str:
    while text and draw.textlength(text, font=font) > width:
        text = text[:-2] + "…" if len(text) > 2 else ""
    return text


def jpeg_bytes(image: Image.Image) -> bytes:
    """The best quality that fits MAX_BYTES."""
    for quality in (85, 75, 65, 55, 45):
        out = io.BytesIO()
        image.save(out, "JPEG", quality=quality, optimize=True)
        if out.tell() <= MAX_BYTES:
            return out.getvalue()
    raise ValueError(f"thumbnail does not fit {MAX_BYTES} bytes")


def write_all(folder: Path = WORKFLOWS_DIR) -> list[Path]:
    written = []
    for path in sorted(folder.glob("*.json")):
        target = path.with_suffix(".jpg")
        target.write_bytes(jpeg_bytes(render(json.loads(path.read_text()))))
        written.append(target)
    return written


if __name__ == "__main__":
    for path in write_all():
        print(f"{path.name}: {path.stat().st_size} bytes")
