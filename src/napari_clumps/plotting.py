"""Pictures of detections for people (matplotlib, no napari): an image with its boxes."""

from __future__ import annotations

from pathlib import Path

from .detections import CLASS_COLOURS, box_array
from .pixels import flip_boxes_vertically, north_up


def save_boxes_png(image, table, path, title: str | None = None) -> Path:
    """Save ``image`` (a GalaxyImage) with the boxes of ``table`` drawn on it.

    FITS images are drawn north up (FITS row 1 at the bottom) as in napari and DS9; the boxes
    are in the array's pixel-edge coordinates either way.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    from .atomic import atomic_path

    height, width = image.height, image.width
    shown, boxes = image.composite, box_array(table)
    if image.is_fits:  # drawn north up; boxes follow the rows
        shown, boxes = north_up(shown), flip_boxes_vertically(boxes, height)
    fig, ax = plt.subplots(figsize=(4.2, 4.2 * height / width + 0.3))
    # extent in edge coordinates: pixel (r, c) spans [c, c+1) x [r, r+1)
    ax.imshow(shown, extent=(0, width, height, 0), interpolation="nearest")
    for (x_min, y_min, x_max, y_max), label, score in zip(boxes, table.label, table.score):
        colour = CLASS_COLOURS.get(label, "white")
        ax.add_patch(Rectangle((x_min, y_min), x_max - x_min, y_max - y_min, fill=False, ec=colour, lw=1.2))
        ax.text(x_min, y_min, f"{score:.2f}", color=colour, fontsize=7, va="bottom", ha="left")
    ax.set_xlim(0, width)
    ax.set_ylim(height, 0)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title or f"{Path(image.path).name}: {len(table)} clumps", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return path
