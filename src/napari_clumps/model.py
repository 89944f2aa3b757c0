"""The clump detector: a torchvision Faster R-CNN on a Zoobot (timm) or ResNet-50 backbone.

* :class:`DetectorConfig` says everything needed to rebuild a detector; it travels inside every
  model file with the weights and the provenance.
* :data:`BACKBONES` names the built-in choices; :func:`build_detector` makes the network.
* :func:`get_detector` is the one way to get a detector from a name, a file or a built-in
  architecture; it is built from :func:`load_model` (a model file), :func:`new_detector` (a
  built-in architecture with an untrained head) and the packaged models.
* :func:`save_model` / :func:`load_model` read and write model files (safetensors: loading
  never executes code; the format is in docs/contracts.md); :func:`load_paper_checkpoint` reads
  the ``nn.DataParallel`` state dicts released with Popp et al. 2024.

Classes are background / clump / odd clump (:data:`napari_clumps.detections.CLASS_NAMES`).
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from .detections import CLASS_NAMES

MODEL_FORMAT = "napari-clumps-model"
MODEL_FORMAT_VERSION = 1
ZOOBOT_HUB = "hf_hub:mwalmsley/zoobot-encoder-{arch}"
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class ModelError(ValueError):
    """A model that cannot be built or loaded; ``str()`` names the file or model and the reason."""


@dataclass
class DetectorConfig:
    """Everything needed to rebuild a detector (the weights aside).

    Pixel sizes are in pixels of the image as given to :func:`napari_clumps.inference.detect`;
    the network sees it scaled by ``input_scale``.
    """

    backbone: str = "zoobot-convnext_nano"
    #: "timm" (a timm encoder + FPN) or "torchvision-resnet50-fpn" (the paper's network).
    kind: str = "timm"
    timm_arch: str = "convnext_nano"
    #: Where pretrained encoder weights come from ("" = none: random init or a weights file).
    hub_id: str = "hf_hub:mwalmsley/zoobot-encoder-convnext_nano"
    in_chans: int = 3
    class_names: tuple = CLASS_NAMES
    #: Normalisation the backbone was trained with: Zoobot takes 0-1 floats as they are.
    image_mean: tuple = (0.0, 0.0, 0.0)
    image_std: tuple = (1.0, 1.0, 1.0)
    #: Fixed resize factor before the network (timm kind). The paper's kind uses min/max_size.
    input_scale: float = 1.0
    min_size: int = 800
    max_size: int = 1333
    #: Anchor sides per FPN level (strides 4, 8, 16, 32, 64 of the scaled input) and aspect ratios.
    #: Clump boxes are squares of 4-50 px (median 17) on 200-400 px cutouts, not COCO objects;
    #: coverage of simulated truth boxes measured in docs/benchmarks/anchor_coverage.md.
    anchor_sizes: tuple = ((8, 12), (16, 24), (32, 48), (64, 96), (128, 192))
    aspect_ratios: tuple = (1.0,)
    fpn_channels: int = 128
    box_head_width: int = 256
    #: Proposal counts: a cutout has 0-9 clumps, not COCO's crowds. Sampled RoIs per training
    #: image: 64 instead of 512 (torchvision's CPU roi_align backward dominates a step otherwise).
    rpn_pre_nms_top_n_train: int = 600
    rpn_post_nms_top_n_train: int = 300
    rpn_pre_nms_top_n_test: int = 300
    rpn_post_nms_top_n_test: int = 100
    box_batch_size_per_image: int = 64
    box_detections_per_img: int = 50
    #: Internal floor; the user's score threshold is applied after class-agnostic NMS.
    box_score_thresh: float = 0.05
    box_nms_thresh: float = 0.5
    #: Images larger than this (after input_scale) are tiled with this overlap.
    tile_size: int = 512
    tile_overlap: int = 64
    #: PSF FWHM (pixels) of the training images; images whose PSF is known are resampled to it
    #: (:mod:`napari_clumps.scale`). 0: unknown, images are used as they are.
    psf_fwhm_px: float = 0.0

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_dict(cls, values: dict) -> DetectorConfig:
        """The configuration of a model file's ``config``; ValueError naming what does not fit.

        A setting this version does not know is refused, not dropped: the model it describes
        would not be the one built here (a newer napari-clumps wrote it)."""
        defaults = cls()
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(
                f"its config has settings this version does not know ({', '.join(unknown)}); written by a "
                f"newer napari-clumps? upgrade"
            )
        converted = {}
        for key, value in values.items():
            default = getattr(defaults, key)
            if isinstance(default, tuple):
                if not isinstance(value, list | tuple):
                    raise ValueError(f"its config setting {key} is {value!r}, not a list")
                value = tuple(tuple(x) if isinstance(x, list) else x for x in value)
            elif isinstance(default, float):
                ok = isinstance(value, int | float) and not isinstance(value, bool)
                if not ok:
                    raise ValueError(f"its config setting {key} is {value!r}, not a number")
            elif not isinstance(value, type(default)) or isinstance(value, bool) != isinstance(default, bool):
                raise ValueError(f"its config setting {key} is {value!r}, not a {type(default).__name__}")
            converted[key] = value
        return cls(**converted)


def _zoobot(arch: str, in_chans: int = 3, **changes) -> DetectorConfig:
    name = f"zoobot-{'greyscale-' if in_chans == 1 else ''}{arch}"
    mean, std = (0.0,) * in_chans, (1.0,) * in_chans
    hub_id = ZOOBOT_HUB.format(arch=("greyscale-" if in_chans == 1 else "") + arch)
    return DetectorConfig(
        backbone=name,
        kind="timm",
        timm_arch=arch,
        hub_id=hub_id,
        in_chans=in_chans,
        image_mean=mean,
        image_std=std,
        **changes,
    )


def _paper() -> DetectorConfig:
    """``fasterrcnn_resnet50_fpn`` with a 3-class predictor, as the paper's code builds it."""
    return DetectorConfig(
        backbone="paper-resnet50-fpn",
        kind="torchvision-resnet50-fpn",
        timm_arch="",
        hub_id="",
        in_chans=3,
        image_mean=IMAGENET_MEAN,
        image_std=IMAGENET_STD,
        input_scale=1.0,
        min_size=800,
        max_size=1333,
        anchor_sizes=((32,), (64,), (128,), (256,), (512,)),
        aspect_ratios=(0.5, 1.0, 2.0),
        fpn_channels=256,
        box_head_width=1024,
        rpn_pre_nms_top_n_test=1000,
        rpn_post_nms_top_n_test=1000,
        rpn_pre_nms_top_n_train=2000,
        rpn_post_nms_top_n_train=2000,
        box_batch_size_per_image=512,
        box_detections_per_img=100,
        box_score_thresh=0.05,
        box_nms_thresh=0.5,
        tile_size=1024,
    )


#: Built-in detector architectures by name (backbone weights from the Zoobot hub, heads untrained).
BACKBONES = {
    "zoobot-convnext_nano": lambda: _zoobot("convnext_nano"),
    "zoobot-convnext_pico": lambda: _zoobot("convnext_pico"),
    "zoobot-efficientnet_b0": lambda: _zoobot("efficientnet_b0"),
    "zoobot-resnet18": lambda: _zoobot("resnet18"),
    "zoobot-resnet50": lambda: _zoobot("resnet50"),
    "zoobot-greyscale-convnext_nano": lambda: _zoobot("convnext_nano", in_chans=1),
    "zoobot-greyscale-convnext_pico": lambda: _zoobot("convnext_pico", in_chans=1),
    "zoobot-greyscale-efficientnet_b0": lambda: _zoobot("efficientnet_b0", in_chans=1),
    "paper-resnet50-fpn": _paper,
    # Small and fast, no Zoobot weights: for tests and quick experiments from scratch.
    "resnet10t": lambda: DetectorConfig(backbone="resnet10t", timm_arch="resnet10t", hub_id=""),
}


def config_for(name: str, **changes) -> DetectorConfig:
    """The built-in configuration ``name`` (see :data:`BACKBONES`), with ``changes`` applied."""
    if name not in BACKBONES:
        raise ModelError(f"{name}: unknown model; built-in names are {', '.join(BACKBONES)}")
    config = BACKBONES[name]()
    for key, value in changes.items():
        setattr(config, key, value)
    return config


# ----------------------------------------------------------------------------- building


def import_libraries() -> None:
    """Import what building and running a detector needs (PyTorch, torchvision's detection
    models, timm), for a caller that wants that cost paid at a moment of its choosing (the napari
    widgets' workers: ``napari_clumps._background.import_pytorch_without_gc_pauses``)."""
    import timm  # noqa: F401
    import torchvision.models.detection  # noqa: F401

    from . import networks  # noqa: F401


def _timm_encoder(config: DetectorConfig, weights):
    """The timm encoder; ``weights``: None (random), "hub", a weights file or a Zoobot checkpoint."""
    import timm

    if weights is None:
        return timm.create_model(config.timm_arch, pretrained=False, num_classes=0, in_chans=config.in_chans)
    if weights == "hub":
        hub_id = config.hub_id
        if not hub_id:
            raise ModelError(
                f"{config.backbone}: has no pretrained weights on a hub; train it from scratch "
                f"(no backbone weights) or give a weights file"
            )
        try:
            return timm.create_model(hub_id, pretrained=True, num_classes=0)
        except Exception as error:
            repo = hub_id.removeprefix("hf_hub:")
            raise ModelError(
                f"{hub_id}: could not get the Zoobot weights ({type(error).__name__}); offline, download "
                f"model.safetensors from https://huggingface.co/{repo} elsewhere and pass it as the "
                f"backbone weights file (--backbone-weights FILE), or place the repository in the Hugging "
                f"Face cache (~/.cache/huggingface/hub, models--{repo.replace('/', '--')})"
            ) from error
    path = Path(weights)
    if not path.is_file():
        raise ModelError(f"{path}: backbone weights file not found")
    if path.suffix == ".ckpt":  # a Zoobot (Lightning) checkpoint: zoobot's own loader, which unpickles
        try:
            from zoobot.pytorch.training.finetune import load_pretrained_zoobot
        except ImportError as error:
            raise ModelError(
                f"{path}: reading Zoobot checkpoints needs zoobot's PyTorch extra "
                f"(pip install 'zoobot[pytorch]'): {error}"
            ) from error
        try:
            encoder = load_pretrained_zoobot(str(path))
        except Exception as error:
            raise ModelError(f"{path}: not a Zoobot checkpoint ({type(error).__name__}: {error})") from error
        if hasattr(encoder, "reset_classifier"):
            encoder.reset_classifier(0)
        return encoder
    try:
        return timm.create_model(
            config.timm_arch,
            pretrained=True,
            num_classes=0,
            in_chans=config.in_chans,
            pretrained_cfg_overlay={"file": str(path), "num_classes": 0},
        )
    except Exception as error:
        raise ModelError(f"{path}: not {config.timm_arch} weights ({type(error).__name__}: {error})") from error


def build_detector(config: DetectorConfig, backbone_weights=None):
    """A torchvision ``FasterRCNN`` for ``config``; ``backbone_weights`` as in :func:`_timm_encoder`."""
    from torchvision.models.detection import FasterRCNN, fasterrcnn_resnet50_fpn
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.models.detection.rpn import AnchorGenerator
    from torchvision.ops import MultiScaleRoIAlign

    n_classes = len(config.class_names)
    common = dict(
        image_mean=list(config.image_mean),
        image_std=list(config.image_std),
        min_size=config.min_size,
        max_size=config.max_size,
        rpn_pre_nms_top_n_train=config.rpn_pre_nms_top_n_train,
        rpn_post_nms_top_n_train=config.rpn_post_nms_top_n_train,
        rpn_pre_nms_top_n_test=config.rpn_pre_nms_top_n_test,
        rpn_post_nms_top_n_test=config.rpn_post_nms_top_n_test,
        box_batch_size_per_image=config.box_batch_size_per_image,
        box_detections_per_img=config.box_detections_per_img,
        box_score_thresh=config.box_score_thresh,
        box_nms_thresh=config.box_nms_thresh,
    )
    if config.kind == "torchvision-resnet50-fpn":
        if backbone_weights not in (None, "hub"):
            raise ModelError(f"{config.backbone}: takes no backbone weights file; load a paper checkpoint instead")
        model = fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, **common)
        in_features = model.roi_heads.box_predictor.cls_score.in_features
        model.roi_heads.box_predictor = FastRCNNPredictor(in_features, n_classes)
        return model
    if config.kind != "timm":
        raise ModelError(f"{config.backbone}: unknown detector kind {config.kind!r}")

    from .networks import FixedScaleTransform, TimmFPN

    backbone = TimmFPN(_timm_encoder(config, backbone_weights), config.fpn_channels)
    anchors = AnchorGenerator(
        sizes=tuple(tuple(s) for s in config.anchor_sizes),
        aspect_ratios=(tuple(config.aspect_ratios),) * len(config.anchor_sizes),
    )
    pooler = MultiScaleRoIAlign(featmap_names=["0", "1", "2", "3"], output_size=7, sampling_ratio=2)
    model = FasterRCNN(
        backbone,
        num_classes=None,
        rpn_anchor_generator=anchors,
        box_roi_pool=pooler,
        box_head=TwoMLPHead(config.fpn_channels * 7 * 7, config.box_head_width),
        box_predictor=FastRCNNPredictor(config.box_head_width, n_classes),
        **common,
    )
    model.transform = FixedScaleTransform.replacing(model.transform, config.input_scale)
    return model


# ----------------------------------------------------------------------------- model files


@dataclass
class Detector:
    """A built network with its configuration and provenance (what a model file holds)."""

    network: object
    config: DetectorConfig
    provenance: dict = field(default_factory=dict)
    source: str = ""

    @property
    def model_id(self) -> str:
        """Short id written in the CSV ``model`` column."""
        return self.provenance.get("model_id") or self.config.backbone

    @property
    def score_threshold(self) -> float:
        """The model's recommended score threshold (calibrated when it was made), else 0.3."""
        return recommended_threshold(self.provenance)

    @property
    def trained(self) -> bool:
        """False for a built-in architecture fresh from :func:`new_detector` (untrained head)."""
        return not self.provenance.get("untrained", False)


#: The paper's score threshold, for models that were not calibrated.
PAPER_SCORE_THRESHOLD = 0.3


def recommended_threshold(provenance: dict) -> float:
    return float(provenance.get("score_threshold", PAPER_SCORE_THRESHOLD))


def read_provenance(path) -> dict:
    """A model file's provenance without loading its weights (no torch needed)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as handle:
            return json.loads((handle.metadata() or {}).get("provenance", "{}"))
    except Exception:
        return {}


def new_detector(name: str, backbone_weights="hub", **changes) -> Detector:
    """A detector of built-in architecture ``name`` with an untrained detection head."""
    config = config_for(name, **changes)
    network = build_detector(config, backbone_weights)
    return Detector(
        network,
        config,
        {"model_id": f"{name}-untrained", "base": name, "untrained": True, "backbone_weights": str(backbone_weights)},
        source=name,
    )


#: Models that ship inside the package, by name.
PACKAGED_MODELS = {"default": "default_clump_detector.safetensors"}
DEFAULT_MODEL = "default"
_LOADED: dict = {}  # the last model file loaded, by (path, modification time, device)


def packaged_model_path(name: str = DEFAULT_MODEL) -> Path:
    return Path(__file__).parent / "models" / PACKAGED_MODELS[name]


def get_detector(model=None, device="auto", *, backbone_weights=None) -> Detector:
    """A :class:`Detector` from whatever names one.

    ``model``: a Detector (returned as it is); None or a packaged model's name (``"default"``);
    a model file (``.safetensors``, or a paper checkpoint ``.pt``/``.pth``); or a built-in
    architecture of :data:`BACKBONES`, which gives a detector with an *untrained* head to train
    (its encoder from ``backbone_weights``: a weights file, ``"hub"`` (the default when the
    architecture has Zoobot weights) or ``"none"``). Model files are cached (the last one), so
    asking again is free; :func:`napari_clumps.training.train` never changes the detector it is given.
    """
    if isinstance(model, Detector):
        return model
    name = DEFAULT_MODEL if model is None else str(model)
    if name in PACKAGED_MODELS:
        path = packaged_model_path(name)
        if not path.is_file():
            raise ModelError(f"{path}: the packaged '{name}' model is missing from this installation")
    elif name in BACKBONES and not Path(name).exists():
        weights = backbone_weights or ("hub" if BACKBONES[name]().hub_id else None)
        detector = new_detector(name, backbone_weights=None if weights == "none" else weights)
        return Detector(detector.network.to(select_device(device)), detector.config, detector.provenance, name)
    else:
        path = Path(name)
        if not path.exists():
            raise ModelError(f"{name}: no such model file or packaged model")
    torch_device = select_device(device)
    key = (str(path.resolve()), path.stat().st_mtime_ns, str(torch_device))
    if key not in _LOADED:
        # loaded before the cache changes: a file that fails leaves nothing half-loaded behind,
        # and the model loaded before it stays cached
        detector = load_model(path, device=torch_device)
        _LOADED.clear()  # keep one model in memory
        _LOADED[key] = detector
    return _LOADED[key]


def save_model(detector: Detector, path, half: bool = False) -> Path:
    """Write a model file (safetensors + JSON metadata) atomically.

    ``half`` stores floating-point weights as float16 (half the size; loading casts them back to
    the network's float32).
    """
    from safetensors.torch import save_file

    from .atomic import atomic_path

    state = {k: v.detach().cpu().contiguous() for k, v in detector.network.state_dict().items()}
    if half:
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    metadata = {
        "format": MODEL_FORMAT,
        "format_version": str(MODEL_FORMAT_VERSION),
        "config": detector.config.to_json(),
        "provenance": json.dumps(detector.provenance, default=str),
    }
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=metadata)
    return Path(path)


#: A safetensors header larger than this is not one (ours are a few hundred kB).
_MAX_HEADER_BYTES = 100_000_000
#: How the first bytes of files that are not safetensors begin, to say what they are instead.
_PICKLE_MAGIC, _ZIP_MAGIC = b"\x80", b"PK\x03\x04"


def _one_line(error: Exception) -> str:
    """An exception as ``Type: first line`` (torch's messages run over many lines)."""
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


def check_model_file(path) -> dict:
    """Cheap checks of a model file that read only its header; raises :class:`ModelError`.

    For a safetensors file: the header, the ``format`` and ``format_version`` (newer than this
    code reads is refused), the ``config`` (JSON whose settings this version knows) and
    ``provenance``, and that the file is as long as its header says (not truncated); returns the
    metadata. For a paper checkpoint (``.pt``/``.pth``): that it is a PyTorch file whose pickle
    names no function outside torch's tensor rebuilding (read with :mod:`pickletools`, which
    runs nothing); returns ``{}``. No torch import and no weights read: milliseconds, so that
    the widgets can check a file when it is chosen. What only the weights tell (NaN values,
    tensors that do not fit the architecture) is checked by :func:`load_model`.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: model file not found")
    if path.suffix in (".pt", ".pth"):
        _check_checkpoint_pickle(path)
        return {}
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            start = handle.read(8)
            length = int.from_bytes(start, "little") if len(start) == 8 else -1
            header = handle.read(length) if 0 < length <= min(size - 8, _MAX_HEADER_BYTES) else b""
    except OSError as error:
        raise ModelError(f"{path}: cannot be read ({error.strerror})") from error
    if not header:
        raise ModelError(f"{path}: not a napari-clumps model file ({_what_it_is(start)})")
    try:
        entries = json.loads(header)
        if not isinstance(entries, dict):
            raise ValueError("not a JSON object")
        metadata = entries.pop("__metadata__", None) or {}
        end = max((int(entry["data_offsets"][1]) for entry in entries.values()), default=0)
    except (ValueError, TypeError, KeyError, IndexError) as error:
        raise ModelError(f"{path}: not a napari-clumps model file (a damaged safetensors header: {error})") from error
    if metadata.get("format") != MODEL_FORMAT:
        raise ModelError(f"{path}: not a napari-clumps model file (no {MODEL_FORMAT} metadata)")
    if size < 8 + length + end:
        raise ModelError(f"{path}: truncated: {size} bytes of the {8 + length + end} its header says")
    if size > 8 + length + end:
        raise ModelError(f"{path}: damaged: {size} bytes, its header says {8 + length + end}")
    version = metadata.get("format_version", "")
    if not version.isdigit() or int(version) < 1:
        raise ModelError(f"{path}: malformed metadata: format_version {version!r} is not a version number")
    if int(version) > MODEL_FORMAT_VERSION:
        raise ModelError(
            f"{path}: written by a newer napari-clumps (format {version}; this version reads up to "
            f"{MODEL_FORMAT_VERSION}): upgrade napari-clumps"
        )
    _config_of(path, metadata)
    try:
        json.loads(metadata.get("provenance", "{}"))
    except ValueError as error:
        raise ModelError(f"{path}: malformed metadata: its provenance is not JSON ({error})") from error
    return metadata


def _what_it_is(start: bytes) -> str:
    if start.startswith(_ZIP_MAGIC) or start.startswith(_PICKLE_MAGIC):
        return "it is a PyTorch pickle, which a .safetensors file never is; it is not opened"
    return "no safetensors header"


def _config_of(path, metadata: dict) -> DetectorConfig:
    try:
        values = json.loads(metadata.get("config", ""))
        if not isinstance(values, dict):
            raise ValueError("not a JSON object")
    except ValueError as error:
        raise ModelError(f"{path}: malformed metadata: its config is not a JSON object ({error})") from error
    try:
        config = DetectorConfig.from_dict(values)
    except (ValueError, TypeError) as error:
        raise ModelError(f"{path}: malformed metadata: {error}") from error
    if config.kind not in ("timm", "torchvision-resnet50-fpn"):
        raise ModelError(
            f"{path}: unknown detector kind {config.kind!r} (backbone {config.backbone}); written by a newer "
            f"napari-clumps? upgrade"
        )
    return config


#: Globals a paper checkpoint's pickle may name: those ``torch.load(weights_only=True)`` allows
#: (tensor rebuilding, storages, dtypes, an OrderedDict; torch 2.x). Anything else (``os.system``,
#: ``builtins.exec``...) is how a pickle runs code.
_CHECKPOINT_GLOBALS = re.compile(
    r"collections\.(OrderedDict|Counter)|builtins\.(set|bytearray|complex)|_codecs\.encode"
    r"|torch\.(Size|Tensor|device|nn\.parameter\.Parameter|serialization\._get_layout)"
    r"|torch\.storage\.(Typed|Untyped)Storage|torch\._tensor\._rebuild_from_type_v2|torch\._utils\._rebuild_\w+"
    r"|torch\.(cuda\.)?(sparse\.)?\w+(Storage|Tensor)"
    r"|torch\.(u?int\d+|float\w*|bfloat16|b?complex\d+|bool|bits\w+|q\w+|per_\w+)"
)


def _check_checkpoint_pickle(path: Path) -> None:
    """Refuse a ``.pt`` whose pickle names a function that is not torch's (without running it)."""
    import pickletools
    import zipfile

    try:
        with open(path, "rb") as handle:
            start = handle.read(4)
        if start.startswith(_ZIP_MAGIC):  # torch's format since 1.6
            with zipfile.ZipFile(path) as archive:
                names = [n for n in archive.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
                if not names:
                    raise ModelError(f"{path}: not a PyTorch checkpoint (a zip archive without data.pkl)")
                pickles = [archive.read(names[0])]
        elif start.startswith(_PICKLE_MAGIC):  # the legacy format
            pickles = None
        else:
            raise ModelError(f"{path}: not a PyTorch checkpoint (neither a zip archive nor a pickle)")
    except (OSError, zipfile.BadZipFile) as error:  # a truncated zip has lost its directory
        raise ModelError(f"{path}: not a PyTorch checkpoint, or damaged ({_one_line(error)})") from error
    try:
        if pickles is not None:
            found = _pickle_globals(pickles[0], pickletools)
        else:  # the legacy format: five pickles (magic, protocol, system, the object, keys), then data
            found = []
            size = path.stat().st_size
            with open(path, "rb") as handle:
                for _ in range(5):
                    found += _pickle_globals(handle, pickletools)
                    if handle.tell() >= size:  # a single pickle (not torch's layout): all read
                        break
    except ValueError as error:
        raise ModelError(f"{path}: not a PyTorch checkpoint, or damaged ({_one_line(error)})") from error
    bad = [name for name in found if not _CHECKPOINT_GLOBALS.fullmatch(name)]
    if bad:
        raise ModelError(
            f"{path}: refused: its pickle calls {bad[0]}, which could run code when loaded; only state_dicts "
            f"are accepted (nothing was run)"
        )


def _pickle_globals(data, pickletools) -> list[str]:
    """``module.name`` of each global a pickle (bytes or an open file) names; nothing is run."""
    found, strings, memo = [], [], {}
    for opcode, arg, _ in pickletools.genops(data):
        if opcode.name == "GLOBAL":
            found.append(arg.replace(" ", "."))
        elif opcode.name == "STACK_GLOBAL":  # module and name are the last two strings pushed
            found.append(".".join(strings[-2:]) if len(strings) >= 2 else "an unknown global")
        elif isinstance(arg, str) and "UNICODE" in opcode.name:
            strings.append(arg)
        elif opcode.name in ("BINPUT", "LONG_BINPUT", "PUT", "MEMOIZE") and strings:
            memo[arg if opcode.name != "MEMOIZE" else len(memo)] = strings[-1]
        elif opcode.name in ("BINGET", "LONG_BINGET", "GET") and arg in memo:
            strings.append(memo[arg])
    return found


def _check_finite(path, state: dict) -> None:
    import torch

    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise ModelError(
            f"{path}: {len(bad)} weight tensor(s) hold NaN or infinite values (e.g. {bad[0]}); the model "
            f"is broken (saved from a training that diverged?)"
        )


def _load_weights(path, network, state: dict, what: str) -> None:
    """``state`` into ``network``, or a one-line ModelError saying how they differ."""
    expected = network.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or shapes:
        parts = [
            f"{len(keys)} {kind} (e.g. {keys[0]})"
            for kind, keys in (("missing", missing), ("unexpected", unexpected), ("of another shape", shapes))
            if keys
        ]
        raise ModelError(f"{path}: weights do not fit {what}: {', '.join(parts)} tensors")
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise ModelError(f"{path}: weights do not fit {what} ({_one_line(error)})") from error


def load_model(path, device="cpu") -> Detector:
    """Load a model file written by :func:`save_model`, or a paper checkpoint (``.pt``/``.pth``).

    Every fault is a one-line :class:`ModelError` naming the file: not a model file (or a pickle
    under a ``.safetensors`` name), truncated, a newer format version, malformed metadata, NaN or
    infinite weights, weights of another architecture (and :func:`load_paper_checkpoint`'s).
    """
    path = Path(path)
    if path.suffix in (".pt", ".pth"):
        return load_paper_checkpoint(path, device)
    metadata = check_model_file(path)
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            state = {key: handle.get_tensor(key) for key in handle.keys()}
    except Exception as error:
        raise ModelError(f"{path}: not a napari-clumps model file, or damaged ({_one_line(error)})") from error
    _check_finite(path, state)
    config = _config_of(path, metadata)
    network = _build_for(path, config)
    _load_weights(path, network, state, f"its {config.backbone} architecture")
    return Detector(network.to(device).eval(), config, json.loads(metadata.get("provenance", "{}")), str(path))


def _build_for(path, config: DetectorConfig):
    """The network of a model file's config; what cannot be built is the file's ModelError."""
    if config.kind == "timm":
        import timm

        if not timm.is_model(config.timm_arch):
            raise ModelError(
                f"{path}: unknown encoder architecture {config.timm_arch!r} (backbone {config.backbone}); "
                f"written with a newer timm? upgrade timm"
            )
    try:
        return build_detector(config, backbone_weights=None)
    except ModelError as error:
        raise ModelError(f"{path}: {error}") from error
    except Exception as error:
        raise ModelError(f"{path}: its config does not build a detector ({_one_line(error)})") from error


def load_paper_checkpoint(path, device="cpu") -> Detector:
    """A checkpoint of the paper's code: a (DataParallel) ``state_dict`` of fasterrcnn_resnet50_fpn.

    Its pickle is first read without running it (:func:`check_model_file`), then loaded with
    ``torch.load(weights_only=True)``: a file that would run code is refused either way.
    """
    import pickle

    import torch

    path = Path(path)
    check_model_file(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise ModelError(
            f"{path}: refused: the file holds more than weights (it could run code when "
            f"loaded); only state_dicts are accepted"
        ) from error
    except Exception as error:
        raise ModelError(f"{path}: not a PyTorch checkpoint, or damaged ({_one_line(error)})") from error
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError(f"{path}: not a state_dict (a dict of tensors)")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    _check_finite(path, state)
    config = _paper()
    network = build_detector(config)
    _load_weights(path, network, state, "the paper's 3-class fasterrcnn_resnet50_fpn")
    provenance = {"model_id": f"paper:{path.stem}", "source": "Popp et al. 2024 checkpoint", "file": str(path)}
    return Detector(network.to(device).eval(), config, provenance, str(path))


#: Device choices: "auto" (the default) picks CUDA, then Apple MPS, then the CPU.
DEFAULT_DEVICE = "auto"
DEVICES = (DEFAULT_DEVICE, "cpu", "cuda", "mps")


def select_device(device: str = "auto"):
    """A ``torch.device``: ``auto`` picks CUDA, then Apple MPS, then the CPU."""
    import torch

    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelError("cuda: no CUDA GPU is available here; use --device cpu or auto")
    if device == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ModelError("mps: Apple MPS is not available here; use --device cpu or auto")
    if device not in DEVICES:
        raise ModelError(f"{device}: unknown device; use {', '.join(DEVICES)}")
    return torch.device(device)
