"""Pictures of detections for people (matplotlib, no napari): an image with its boxes."""
from __future__ import annotations

from pathlib import Path

CLASS_COLOURS = {"clump": "#00e5ff", "odd_clump": "#ff9f1c"}


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
    fig, ax = plt.subplots(figsize=(4.2, 4.2 * height / width + 0.3))
    # extent in edge coordinates: pixel (r, c) spans [c, c+1) x [r, r+1)
    origin = "lower" if image.is_fits else "upper"
    extent = (0, width, 0, height) if image.is_fits else (0, width, height, 0)
    ax.imshow(image.composite, origin=origin, extent=extent, interpolation="nearest")
    for row in table.itertuples():
        colour = CLASS_COLOURS.get(row.label, "white")
        ax.add_patch(Rectangle((row.x_min, row.y_min), row.x_max - row.x_min, row.y_max - row.y_min,
                               fill=False, ec=colour, lw=1.2))
        text_y = row.y_max if image.is_fits else row.y_min
        ax.text(row.x_min, text_y, f"{row.score:.2f}", color=colour, fontsize=7,
                va="bottom", ha="left")
    ax.set_xlim(0, width)
    ax.set_ylim((0, height) if image.is_fits else (height, 0))
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title or f"{Path(image.path).name}: {len(table)} clumps", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return path
