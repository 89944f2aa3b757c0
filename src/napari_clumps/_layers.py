"""napari glue shared by the reader, sample data and widgets: layer data tuples and transforms.

This module builds plain ``(data, kwargs, layer_type)`` tuples and never imports napari, so that
it stays cheap; all coordinate conversion goes through :mod:`napari_clumps.pixels`.
"""

from __future__ import annotations

import contextlib
import weakref
from pathlib import Path

import numpy as np

from .detections import CLASS_COLOURS, HAND_MODEL, LABELS, box_array, label_names
from .pixels import boxes_to_napari_rectangles, napari_north_up


def display_transform(is_fits: bool, height: int) -> dict:
    """Layer kwargs of an image (and its boxes): FITS north up (:func:`~napari_clumps.pixels.napari_north_up`)."""
    return napari_north_up(height) if is_fits else {}


def image_layers(image) -> list[tuple]:
    """Layer data tuples of a :class:`~napari_clumps.io.GalaxyImage`: its colour composite alone
    (what the detector sees), whatever the number of bands.

    The raw bands travel in the layer's metadata; :func:`band_layers` makes layers of them when
    asked ("Show raw bands"), so that opening a FITS adds one layer, not one per band as well.
    """
    metadata = {
        "path": str(image.path),
        "wcs": image.wcs,
        "header": image.header,
        "band_names": image.band_names,
        "bands": image.bands,
        "napari_clumps": True,
    }
    kwargs = {"name": Path(image.path).name, "rgb": True, "metadata": metadata}
    return [(image.composite, {**kwargs, **display_transform(image.is_fits, image.height)}, "image")]


def has_raw_bands(image_layer) -> bool:
    """Whether a layer is a FITS colour composite of this plugin, with its raw bands in its metadata."""
    from .io import is_fits_path

    metadata = image_layer.metadata
    return metadata.get("bands") is not None and is_fits_path(metadata.get("path") or "")


def band_layer_name(image_layer_name: str, band_name: str) -> str:
    return f"{image_layer_name} [{band_name}]"


def band_layers(image_layer) -> list[tuple]:
    """Layer data tuples of the raw bands behind a FITS composite layer (see :func:`has_raw_bands`):
    float32, zscale contrast limits, the composite's display transform."""
    from astropy.visualization import ZScaleInterval

    metadata = image_layer.metadata
    # the composite's own keys, not any a widget added to it (the review marks the layers it made)
    shared = {key: metadata.get(key) for key in ("path", "wcs", "header", "band_names", "napari_clumps")}
    transform = {"scale": tuple(image_layer.scale), "translate": tuple(image_layer.translate)}
    layers = []
    for band, band_name in zip(metadata["bands"], metadata["band_names"]):
        low, high = ZScaleInterval().get_limits(band)
        if not high > low:
            low, high = float(band.min()), float(band.max()) + 1e-6
        kwargs = {
            "name": band_layer_name(image_layer.name, band_name),
            "colormap": "gray",
            "contrast_limits": (float(low), float(high)),
            "metadata": {**shared, "bands": None, "band_name": band_name},
            **transform,
        }
        layers.append((band, kwargs, "image"))
    return layers


def label_colours(labels) -> list[str]:
    """Edge colour of each box from its class (a fixed mapping, whatever labels come first)."""
    return [CLASS_COLOURS.get(str(label), "#ffffff") for label in labels]


def layer_edge_colours(labels):
    """The ``edge_color`` of a new clumps layer with boxes of ``labels``: napari refuses an empty
    list for a layer without boxes, which gets the clump colour (for the boxes drawn next)."""
    return label_colours(labels) if len(labels) else CLASS_COLOURS["clump"]


def box_features(labels, scores, models=None, on_host=None):
    """The features table of boxes, typed column by column: napari infers float64 for the columns
    of an empty layer otherwise, and then refuses the text default of the next box drawn."""
    import pandas as pd

    scores = pd.Series(scores, dtype=float)
    models = None if models is None else list(models)
    columns = {"label": pd.Series(list(labels), dtype=object), "score": scores}
    if models is not None:
        columns["model"] = pd.Series(models, dtype=object)
    if on_host is not None:
        columns["on_host"] = pd.Series(on_host, dtype=bool)
    # the text drawn on a box: a model's score; nothing on a box a person drew (not a "sure" 1.00)
    columns["score_text"] = pd.Series(
        ["" if model == HAND_MODEL else f"{score:.2f}" for score, model in zip(scores, models or [None] * len(scores))],
        dtype=object,
    )
    return pd.DataFrame(columns)


def boxes_layer(boxes, labels, scores, *, name: str, image_kwargs: dict | None = None) -> tuple:
    """A Shapes layer data tuple of edge-convention boxes over an image layer.

    ``image_kwargs`` are the kwargs (or attributes) of the image layer: its ``scale`` and
    ``translate`` are copied so the rectangles follow the image's display transform.
    """
    labels = label_names(labels)
    scores = np.broadcast_to(np.asarray(scores, float), (len(labels),)).copy()
    transform = {k: v for k, v in (image_kwargs or {}).items() if k in ("scale", "translate")}
    flipped = transform.get("scale") is not None and transform["scale"][0] < 0
    anchor = "lower_left" if flipped else "upper_left"  # the score sits above the box on screen
    return (
        boxes_to_napari_rectangles(boxes),
        {
            "name": name,
            "shape_type": "rectangle",
            "features": box_features(labels, scores),
            "edge_color": layer_edge_colours(labels),
            "edge_width": 1.5,
            "face_color": "transparent",
            "text": {"string": "{score_text}", "size": 8, "color": "white", "anchor": anchor},
            **transform,
        },
        "shapes",
    )


# ----------------------------------------------------------------------------- boxes <-> layers


def hand_box_features(label: str = "clump") -> dict:
    """Features of a box the user draws: sure (score 1), by hand, on the host, no score shown."""
    return {"label": label, "score": 1.0, "model": HAND_MODEL, "on_host": True, "score_text": ""}


def clumps_layer_name(image_layer_name: str) -> str:
    """The name of the boxes layer over an image layer."""
    return f"{image_layer_name} clumps"


def image_name(image_layer) -> str:
    """The name an image layer has in CSVs: its file name, else the layer name."""
    path = image_layer.metadata.get("path") if image_layer is not None else None
    return Path(path).name if path else image_layer.name


def layer_to_galaxy_image(layer):
    """The :class:`~napari_clumps.io.GalaxyImage` behind an image layer (what the detector sees)."""
    from .io import GalaxyImage

    data = np.asarray(layer.data)
    name, wcs, header = image_name(layer), layer.metadata.get("wcs"), layer.metadata.get("header")
    if layer.rgb:
        return GalaxyImage.from_rgb(data, name, wcs, header)
    if data.ndim != 2:
        raise ValueError(f"{layer.name}: a {data.ndim}-D layer; choose a 2-D image or an RGB layer")
    return GalaxyImage.from_bands(np.nan_to_num(data.astype(np.float32))[None], ("L",), name, wcs, header)


def detections_layer(
    table,
    *,
    image_name: str,
    transform: dict,
    wcs=None,
    height=None,
    width=None,
    name: str | None = None,
    new_label: str = "clump",
) -> tuple:
    """A Shapes layer data tuple of a detections table, with the image's display ``transform``."""
    from .host import on_host_flags

    boxes = box_array(table)
    data, kwargs, kind = boxes_layer(
        boxes,
        list(table.label),
        table.score.to_numpy(float),
        name=name or clumps_layer_name(image_name),
        image_kwargs=transform,
    )
    # Off the host galaxy (False) or not (True, also when no host was found or for hand labels).
    on_host = table["on_host"] if "on_host" in table else [True] * len(table)
    kwargs["features"] = box_features(
        kwargs["features"]["label"], kwargs["features"]["score"], table.model, on_host_flags(on_host)
    )
    kwargs["feature_defaults"] = hand_box_features(new_label)
    kwargs["metadata"] = {
        "napari_clumps_boxes": True,
        "image_name": image_name,
        "wcs": wcs,
        "height": height,
        "width": width,
        "below_threshold": None,
        "score_threshold": 0.0,
        "keep_off_host": False,
        "n_boxes_seen": len(boxes),  # how many boxes the layer had after its last change
    }
    return data, kwargs, kind


def detections_layer_over(table, image_layer, new_label: str = "clump") -> tuple:
    """:func:`detections_layer` over an open image layer (its transform, WCS and height)."""
    return detections_layer(
        table,
        image_name=image_name(image_layer),
        name=clumps_layer_name(image_layer.name),
        transform={"scale": image_layer.scale, "translate": image_layer.translate},
        wcs=image_layer.metadata.get("wcs"),
        height=int(np.shape(image_layer.data)[0]),
        width=int(np.shape(image_layer.data)[1]),
        new_label=new_label,
    )


#: Each clumps layer's image layer, held weakly on both sides; kept here, not in the layer's
#: metadata, so that a duplicated clumps layer (napari copies the metadata) is not tied as well.
_IMAGE_OF_BOXES = weakref.WeakKeyDictionary()


#: Metadata key of the layers the review queue shows (its value: the image's name in the queue).
#: They are the queue's own: Detect, Fine-tune and the score slider leave them alone, since every
#: change to them is saved to the queue's labels CSV as a review.
REVIEW_LAYER_KEY = "napari_clumps_review"


def is_review_layer(layer) -> bool:
    return REVIEW_LAYER_KEY in layer.metadata


def is_boxes_layer(layer) -> bool:
    """Whether ``layer`` is a clumps layer of Detect and Fine-tune (a Shapes layer of this
    plugin's boxes, not one of the review queue's)."""
    return (
        layer.__class__.__name__ == "Shapes"
        and bool(layer.metadata.get("napari_clumps_boxes"))
        and not is_review_layer(layer)
    )


def mark_loaded_from(metadata: dict, path) -> None:
    """Mark a clumps layer's ``metadata`` as holding the boxes of the detections file ``path``:
    the user's catalogue, which Detect keeps (:func:`holds_users_boxes`)."""
    metadata["loaded_from"] = str(path)


def holds_users_boxes(layer) -> bool:
    """Whether a clumps layer's boxes are the user's work, which Detect never writes over: edited
    in the viewer, or loaded from a detections file (a catalogue the user brought, maybe corrected
    by hand before)."""
    return bool(layer.metadata.get("edited") or layer.metadata.get("loaded_from"))


def tie_to_image(boxes_layer, image_layer, show_now: bool = True) -> None:
    """Make ``boxes_layer`` the clumps layer of ``image_layer`` (:func:`clumps_layer_of` finds it
    under any name the user gives either), and show and hide it with the image from now on: with
    the galaxy hidden, the one below shows, and these boxes over it would mark clumps it does not
    have. The boxes can still be hidden alone. A renamed image renames its clumps layer (unless
    the user named that layer) and, for an image with no file, the image its boxes are of. Tying
    a layer to the image it is tied to already does nothing. ``show_now=False``: the layer keeps
    its visibility until the image's next change or :func:`show_with_image` (a layer shown a
    frame after it was inserted)."""
    tied = _IMAGE_OF_BOXES.get(boxes_layer)
    if tied is not None and tied() is image_layer:
        return
    _IMAGE_OF_BOXES[boxes_layer] = weakref.ref(image_layer)
    boxes = weakref.ref(boxes_layer)  # a removed clumps layer is not kept alive by its image

    def follow(event=None):
        layer = boxes()
        if layer is not None:
            show_with_image(layer)

    last_name = [image_layer.name]

    def follow_name(event=None):
        layer, old, new = boxes(), last_name[0], image_layer.name
        last_name[0] = new
        tie = _IMAGE_OF_BOXES.get(layer) if layer is not None else None
        if tie is None or tie() is not image_layer:
            return
        if layer.name == clumps_layer_name(old):  # a name the user gave the boxes stays
            layer.name = clumps_layer_name(new)
        if not image_layer.metadata.get("path") and layer.metadata.get("image_name") == old:
            layer.metadata["image_name"] = new  # no file: the layer's name is the CSV's image

    if show_now:
        follow()
    image_layer.events.visible.connect(follow)
    image_layer.events.name.connect(follow_name)


def show_with_image(boxes_layer) -> None:
    """Show or hide a clumps layer as its image is (:func:`tie_to_image`)."""
    tied = _IMAGE_OF_BOXES.get(boxes_layer)
    image_layer = tied() if tied is not None else None
    if image_layer is not None:
        boxes_layer.visible = image_layer.visible


@contextlib.contextmanager
def selection_kept(layers):
    """Insert layers into ``layers`` (a viewer's layer list) without selecting them.

    napari makes every layer it inserts the selected one, which swaps the layer controls under
    the user's hand: once per image while Detect runs, taking the layer the user was working on
    (and ~35 ms of the GUI thread each). napari has no public switch for it: its list's own flag
    is turned off meanwhile, where the list has it (else napari selects as before).
    """
    if not hasattr(layers, "_activate_on_insert"):
        yield
        return
    before, layers._activate_on_insert = layers._activate_on_insert, False
    try:
        yield
    finally:
        layers._activate_on_insert = before


def clumps_layer_of(layers, image_layer):
    """The clumps layer over ``image_layer`` among ``layers``, or None: the one tied to it
    (:func:`tie_to_image`), else one tied to no open image whose boxes are of its file (opened
    from a detections file, or left by an image removed and opened again). Not by the layer's
    name: a layer the user renamed, or one left by another image of that name, would be taken."""
    free = []
    for layer in layers:
        if not is_boxes_layer(layer):
            continue
        tied = _IMAGE_OF_BOXES.get(layer)
        image = tied() if tied is not None else None
        if image is image_layer:
            return layer
        if image is None or image not in layers:
            free.append(layer)
    file_name = image_name(image_layer)
    return next((layer for layer in free if layer.metadata.get("image_name") == file_name), None)


def boxes_table(shapes_layer):
    """The detections table of a Shapes layer (boxes as drawn, edited or deleted by the user)."""
    return shapes_table(shapes_layer.data, shapes_layer.features, shapes_layer.metadata, shapes_layer.name)


def shapes_table(vertices, features, metadata: dict, layer_name: str):
    """The detections table of Shapes data + features + metadata (a layer or its data tuple)."""
    import pandas as pd

    from .detections import detections_frame
    from .pixels import napari_rectangles_to_boxes

    features = pd.DataFrame(features)
    n = len(vertices)
    return detections_frame(
        (metadata or {}).get("image_name") or layer_name,
        napari_rectangles_to_boxes(vertices),
        list(features["label"]) if "label" in features else ["clump"] * n,
        features["score"].to_numpy(float) if "score" in features else 1.0,
        wcs=(metadata or {}).get("wcs"),
        model=list(features["model"]) if "model" in features else HAND_MODEL,
    )


def shown_by_threshold(features, threshold: float, keep_off_host: bool) -> np.ndarray:
    """Which boxes (rows of a features table) the score filter shows: a score of at least
    ``threshold`` and on the host unless ``keep_off_host``; a box drawn by hand always."""
    from .host import on_host_flags

    on_host = on_host_flags(features["on_host"]) if "on_host" in features else True
    by_hand = (features["model"] == HAND_MODEL).to_numpy() if "model" in features else False
    return ((features["score"].to_numpy(float) >= threshold) & (on_host | keep_off_host)) | by_hand


def with_score_threshold(data, kwargs: dict, threshold: float, keep_off_host: bool) -> tuple[list, dict]:
    """A :func:`detections_layer` ``(data, kwargs)`` with only the boxes the score filter shows,
    the others in its pool, as :func:`apply_score_threshold` on the whole layer would leave it;
    but without building the layer twice (its cost is the GUI thread's)."""
    features = kwargs["features"].reset_index(drop=True)
    keep = np.broadcast_to(shown_by_threshold(features, threshold, keep_off_host), (len(features),))
    shown, hidden = features[keep].reset_index(drop=True), features[~keep].reset_index(drop=True)
    hidden["_vertices"] = [np.asarray(vertices) for vertices, kept in zip(data, keep) if not kept]
    metadata = dict(kwargs["metadata"], below_threshold=hidden, score_threshold=float(threshold))
    metadata.update(keep_off_host=bool(keep_off_host), n_boxes_seen=len(shown))
    kwargs = dict(kwargs, features=shown, edge_color=layer_edge_colours(shown["label"]), metadata=metadata)
    return [vertices for vertices, kept in zip(data, keep) if kept], kwargs


def apply_score_threshold(shapes_layer, threshold: float, keep_off_host: bool | None = None) -> None:
    """Show only boxes scoring at least ``threshold`` (and on the host galaxy unless
    ``keep_off_host``; None: as the layer was); hidden ones are kept and come back.

    Boxes the user drew (model "hand") always stay. Edits to shown boxes are kept, because the
    layer is rebuilt from its current shapes, not from the model's output.
    """
    import pandas as pd

    metadata = shapes_layer.metadata
    current = pd.DataFrame(shapes_layer.features).reset_index(drop=True)
    current["_vertices"] = [np.asarray(v) for v in shapes_layer.data]
    pool = metadata.get("below_threshold")
    everything = current if pool is None or len(pool) == 0 else pd.concat([current, pool], ignore_index=True)
    if keep_off_host is None:
        keep_off_host = bool(metadata.get("keep_off_host", False))
    keep = shown_by_threshold(everything, threshold, keep_off_host)
    shown, hidden = everything[keep].reset_index(drop=True), everything[~keep].reset_index(drop=True)
    metadata["below_threshold"] = hidden
    metadata["score_threshold"] = float(threshold)
    metadata["keep_off_host"] = bool(keep_off_host)
    if len(shown) == len(current) and len(hidden) == (0 if pool is None else len(pool)):
        return  # nothing moves
    features = shown.drop(columns="_vertices")
    replace_boxes(shapes_layer, list(shown["_vertices"]), features, label_colours(features["label"]))


@contextlib.contextmanager
def refreshed_once(layer):
    """Change a layer in several steps and have napari redo its view once, after the last: each
    step (emptying, adding, colouring) would otherwise re-slice and re-draw it, on the GUI
    thread. Uses napari's ``Layer._block_refresh`` where it exists (0.5 and later)."""
    block = getattr(layer, "_block_refresh", contextlib.nullcontext)
    with block():
        yield
    layer.refresh()


def replace_boxes(shapes_layer, vertices, features, edge_color, feature_defaults=None) -> None:
    """Put the rectangles ``vertices`` with their ``features`` and ``edge_color`` in place of the
    layer's boxes, redrawn once; the data events this makes are not the user's edits."""
    metadata = shapes_layer.metadata
    metadata["rebuilding"] = True
    try:
        with refreshed_once(shapes_layer):
            shapes_layer.selected_data = set()
            shapes_layer.data = []  # replace in one go: shapes and their features together
            if len(vertices):
                shapes_layer.add_rectangles(list(vertices))
            # also when there are none: emptying the data leaves the old feature rows behind
            shapes_layer.features = features
            if len(vertices):
                shapes_layer.edge_color = edge_color
            if feature_defaults is not None:  # after the features: setting them resets it
                shapes_layer.feature_defaults = feature_defaults
    finally:
        metadata["rebuilding"] = False
        metadata["n_boxes_seen"] = len(shapes_layer.data)


def refill_boxes_layer(shapes_layer, data, kwargs: dict) -> None:
    """Put the boxes of a :func:`detections_layer` tuple ``(data, kwargs)`` into an existing
    clumps layer of the same image, in place of its own (new boxes, not the user's edits)."""
    metadata = shapes_layer.metadata
    metadata.pop("edited", None)
    metadata.pop("loaded_from", None)
    metadata.update(kwargs["metadata"])
    replace_boxes(shapes_layer, data, kwargs["features"], kwargs["edge_color"], kwargs["feature_defaults"])


def note_user_edit(shapes_layer, event=None) -> None:
    """After a box was added, moved or deleted by the user: mark the layer as edited (Detect then
    keeps it), and make boxes just drawn hand boxes (:func:`hand_box_features`: napari gives a new
    shape the features of the last selected one, often a model's box, which the score filter
    could then hide). Changes made by :func:`apply_score_threshold` are not edits."""
    metadata = shapes_layer.metadata
    action = str(getattr(event, "action", "")).lower().rsplit(".", 1)[-1]
    known = metadata.get("n_boxes_seen", len(shapes_layer.data))
    if action not in ("added", "removed", "changed") or metadata.get("rebuilding"):
        return
    metadata["edited"] = True
    if action == "added" and len(shapes_layer.data) > known and len(shapes_layer.features) == len(shapes_layer.data):
        mark_drawn_by_hand(shapes_layer, range(known, len(shapes_layer.data)))
    metadata["n_boxes_seen"] = len(shapes_layer.data)


def mark_drawn_by_hand(shapes_layer, indices) -> None:
    """Give the boxes at ``indices`` the features of a hand-drawn box of the layer's class for new
    boxes (its feature defaults), and their class colour."""
    defaults = shapes_layer.feature_defaults
    label = str(defaults["label"].iloc[0]) if "label" in defaults else LABELS[0]
    features = shapes_layer.features.copy()
    for column, value in hand_box_features(label).items():
        if column in features:
            features.loc[list(indices), column] = value
    shapes_layer.features = features
    shapes_layer.edge_color = label_colours(features["label"])
