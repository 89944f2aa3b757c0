"""What napari-clumps remembers between sessions: a small JSON file in the user's config directory.

The widgets read it when they open and write it when a remembered choice changes (default model,
device, score threshold, the model files added or fine-tuned, the last folders). Headless code can
use it too (``load_settings().model``). The file lives in :func:`settings_path`; the environment
variable :data:`CONFIG_DIR_VARIABLE` points it elsewhere (the tests do). A file that cannot be read
never stops the plugin: one warning names the file and the reason, and the defaults are used.
"""

from __future__ import annotations

import dataclasses
import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from .model import DEFAULT_DEVICE, DEFAULT_MODEL, DEVICES, PACKAGED_MODELS

#: Environment variable naming the directory of the settings file (instead of the user's config
#: directory), for tests, shared installations or a fresh start.
CONFIG_DIR_VARIABLE = "NAPARI_CLUMPS_CONFIG_DIR"
SETTINGS_FILE = "settings.json"
#: The settings file's own layout version, written into it (readers ignore keys they do not know).
SETTINGS_VERSION = 1

#: Warnings already given in this process: a broken file is reported once, not at every read.
_warned: set[str] = set()


@dataclass
class Settings:
    """The remembered choices. Paths are absolute (napari's working directory is wherever it
    happened to start); ``None`` means "never chosen": the widget's own default applies."""

    #: A packaged model's name (:data:`napari_clumps.model.PACKAGED_MODELS`) or a model file.
    model: str = DEFAULT_MODEL
    #: One of :data:`napari_clumps.model.DEVICES`.
    device: str = DEFAULT_DEVICE
    #: The detection widget's score slider; None: the chosen model's recommended threshold
    #: (:func:`napari_clumps.model.recommended_threshold`), which a model file carries.
    score_threshold: float | None = None
    #: Model files offered in the model menus (added by hand or fine-tuned), newest first.
    model_files: list[str] = field(default_factory=list)
    #: The detection widget's detections CSV (export and load).
    detections_csv: str | None = None
    #: The detection widget's cutout catalogue (sky positions of JPEG/PNG cutouts).
    cutout_catalog: str | None = None
    #: The folder the fine-tuning widget last saved a model in.
    finetune_folder: str | None = None
    #: The review widget's images folder and labels CSV, as last opened.
    review_images: str | None = None
    review_labels_csv: str | None = None


#: Fields holding a path (stored absolute).
PATH_FIELDS = ("detections_csv", "cutout_catalog", "finetune_folder", "review_images", "review_labels_csv")


def settings_path() -> Path:
    """The settings file: in ``$NAPARI_CLUMPS_CONFIG_DIR`` if set, else in the user's config
    directory (``platformdirs.user_config_dir("napari-clumps")``: ``~/.config/napari-clumps`` on
    Linux, ``~/Library/Application Support/napari-clumps`` on macOS, ``%LOCALAPPDATA%\\napari-clumps``
    on Windows)."""
    directory = os.environ.get(CONFIG_DIR_VARIABLE)
    if not directory:
        from platformdirs import user_config_dir

        directory = user_config_dir("napari-clumps", appauthor=False)
    return Path(directory).expanduser() / SETTINGS_FILE


def load_settings() -> Settings:
    """The remembered settings; the defaults when there is no file yet.

    A file that cannot be read or parsed gives the defaults, a value of the wrong kind gives that
    setting's default, and model files that no longer exist are left out; each with one warning
    (once per process) naming the file and the reason.
    """
    path = settings_path()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return Settings()
    except (OSError, UnicodeDecodeError) as error:
        _warn_once(f"{path}: cannot read the napari-clumps settings ({_reason(error)}); using the defaults")
        return Settings()
    try:
        stored = json.loads(text)
    except json.JSONDecodeError as error:
        _warn_once(
            f"{path}: not valid JSON ({error}); using the default napari-clumps settings "
            "(the file is replaced when a setting changes)"
        )
        return Settings()
    if not isinstance(stored, dict):
        _warn_once(f"{path}: not a JSON object of settings; using the default napari-clumps settings")
        return Settings()
    return _checked(stored, path)


def save_settings(settings: Settings) -> Path:
    """Write ``settings`` (paths made absolute) atomically; returns the file."""
    from .atomic import atomic_path

    path = settings_path()
    record = {"settings_version": SETTINGS_VERSION, **dataclasses.asdict(_absolute(settings))}
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return path


def update_settings(**changes) -> Settings:
    """Change some settings, keep the others as the file has them (another widget may have changed
    them since this one read it), and save. Returns the new settings."""
    settings = dataclasses.replace(load_settings(), **changes)
    save_settings(settings)
    return settings


def remember_model_file(path) -> Settings:
    """Put a model file first in the remembered model files (once), and save."""
    path = _absolute_path(path)
    files = [path, *(p for p in load_settings().model_files if p != path)]
    return update_settings(model_files=files)


def forget_model_file(path) -> Settings:
    """Take a model file off the remembered model files (it turned out broken), and save."""
    path = _absolute_path(path)
    return update_settings(model_files=[p for p in load_settings().model_files if p != path])


def unused_file_name(folder, name: str) -> Path:
    """``folder/name``, or ``folder/stem-2.suffix`` ... if that file exists: a remembered folder
    must not lead a new model over an older one that a model menu still offers."""
    folder, name = Path(folder), Path(name)
    candidate, number = folder / name, 2
    while candidate.exists():
        candidate = folder / f"{name.stem}-{number}{name.suffix}"
        number += 1
    return candidate


# ---------------------------------------------------------------------- helpers


def _checked(stored: dict, path: Path) -> Settings:
    """Settings from a parsed file: each known key of the right kind, else its default."""
    defaults, values = Settings(), {}
    for name in (f.name for f in dataclasses.fields(Settings)):
        if name not in stored:
            continue
        value, default = stored[name], getattr(defaults, name)
        problem = _problem(name, value)
        if problem:
            _warn_once(f"{path}: setting '{name}' {problem}; using {default!r}")
        else:
            values[name] = value
    settings = Settings(**values)
    gone = [p for p in settings.model_files if not Path(p).expanduser().is_file()]
    for file in gone:
        _warn_once(f"{path}: model file {file} no longer exists; removed from the model menus")
    settings.model_files = [p for p in settings.model_files if p not in gone]
    if settings.model not in PACKAGED_MODELS and not Path(settings.model).expanduser().is_file():
        if settings.model not in gone:  # else just said
            _warn_once(f"{path}: model file {settings.model} no longer exists; using the '{DEFAULT_MODEL}' model")
        settings.model = DEFAULT_MODEL
    return settings


def _problem(name: str, value) -> str:
    """What is wrong with a stored value, or "" if nothing."""
    if name == "device":
        return "" if value in DEVICES else f"is {value!r}, not one of {', '.join(DEVICES)}"
    if name == "model":
        return "" if isinstance(value, str) and value else f"is {value!r}, not a model name or file"
    if name == "score_threshold":
        ok = value is None or (isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value <= 1)
        return "" if ok else f"is {value!r}, not a number from 0 to 1"
    if name == "model_files":
        ok = isinstance(value, list) and all(isinstance(p, str) for p in value)
        return "" if ok else "is not a list of file names"
    return "" if value is None or isinstance(value, str) else f"is {value!r}, not a path"


def _absolute_path(path) -> str:
    return str(Path(path).expanduser().resolve())


def _absolute(settings: Settings) -> Settings:
    changes = {name: _absolute_path(getattr(settings, name)) for name in PATH_FIELDS if getattr(settings, name)}
    if settings.model not in PACKAGED_MODELS:
        changes["model"] = _absolute_path(settings.model)
    changes["model_files"] = list(dict.fromkeys(_absolute_path(p) for p in settings.model_files))
    return dataclasses.replace(settings, **changes)


def _reason(error: Exception) -> str:
    return getattr(error, "strerror", None) or str(error)


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        warnings.warn(message, UserWarning, stacklevel=3)
