"""The settings file: defaults from the core, round trip, absolute paths, and a broken file that
never breaks anything (conftest points every test at its own empty settings directory)."""

import json
import warnings
from pathlib import Path

import pytest

from napari_clumps.model import DEFAULT_DEVICE, DEFAULT_MODEL
from napari_clumps.settings import (
    CONFIG_DIR_VARIABLE,
    Settings,
    load_settings,
    remember_model_file,
    save_settings,
    settings_path,
    unused_file_name,
    update_settings,
)


def test_the_tests_never_touch_the_users_settings(settings_dir):
    assert settings_path() == settings_dir / "settings.json"
    assert not settings_path().exists()


def test_without_a_file_the_defaults_are_the_cores():
    assert load_settings() == Settings()
    assert (Settings().model, Settings().device, Settings().score_threshold) == (DEFAULT_MODEL, DEFAULT_DEVICE, None)


def test_the_user_config_directory_without_the_override(monkeypatch):
    from platformdirs import user_config_dir

    monkeypatch.delenv(CONFIG_DIR_VARIABLE)
    assert settings_path() == Path(user_config_dir("napari-clumps", appauthor=False)) / "settings.json"


def test_round_trip_with_absolute_paths(tmp_path, monkeypatch):
    model = tmp_path / "models" / "tuned.safetensors"
    model.parent.mkdir()
    model.write_bytes(b"weights")
    monkeypatch.chdir(tmp_path)
    saved = Settings(
        model="models/tuned.safetensors",
        device="cpu",
        score_threshold=0.42,
        model_files=["models/tuned.safetensors"],
        review_images="images",
        review_labels_csv="labels.csv",
    )
    path = save_settings(saved)
    stored = json.loads(path.read_text())
    assert stored["model"] == stored["model_files"][0] == str(model)  # absolute: napari starts anywhere
    assert stored["review_images"] == str(tmp_path / "images")
    monkeypatch.chdir(tmp_path / "models")  # another working directory: still the same files
    loaded = load_settings()
    assert (loaded.model, loaded.device, loaded.score_threshold) == (str(model), "cpu", 0.42)
    assert loaded.review_labels_csv == str(tmp_path / "labels.csv")


def test_update_keeps_the_other_settings_and_model_files_go_first_once(tmp_path):
    first, second = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    first.write_bytes(b"a")
    second.write_bytes(b"b")
    update_settings(device="cpu")
    remember_model_file(first)
    remember_model_file(second)
    remember_model_file(first)
    loaded = load_settings()
    assert loaded.device == "cpu" and loaded.model_files == [str(first), str(second)]


@pytest.mark.parametrize(
    "content, reason",
    [
        ("{not json", "not valid JSON (Expecting property name"),
        ("[1, 2]", "not a JSON object of settings"),
        (b"\xff\xfe\x00garbage", "cannot read the napari-clumps settings"),
    ],
)
def test_a_corrupt_file_warns_once_and_gives_the_defaults(content, reason):
    path = settings_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.warns(UserWarning) as caught:
        assert load_settings() == Settings()
    (message,) = [str(w.message) for w in caught]
    assert message.startswith(f"{path}: {reason}") and "\n" not in message
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the second read says nothing more
        assert load_settings() == Settings()
    update_settings(device="cpu")  # a change replaces the broken file
    assert load_settings().device == "cpu"


def test_an_unreadable_file_warns(tmp_path):
    settings_path().mkdir(parents=True)  # a directory where the file should be
    with pytest.warns(UserWarning, match="cannot read the napari-clumps settings"):
        assert load_settings() == Settings()


def test_a_bad_value_gives_that_settings_default_only():
    path = save_settings(Settings(device="cpu"))
    stored = json.loads(path.read_text())
    stored.update(score_threshold="high", device="tpu", unknown_key=1)
    path.write_text(json.dumps(stored))
    with pytest.warns(UserWarning) as caught:
        loaded = load_settings()
    assert (loaded.score_threshold, loaded.device) == (None, DEFAULT_DEVICE)
    messages = sorted(str(w.message) for w in caught)
    assert len(messages) == 2
    assert "setting 'device' is 'tpu', not one of auto, cpu, cuda, mps; using 'auto'" in messages[0]
    assert "setting 'score_threshold' is 'high', not a number from 0 to 1; using None" in messages[1]


def test_model_files_that_are_gone_are_dropped_with_a_note(tmp_path):
    kept, gone = tmp_path / "kept.safetensors", tmp_path / "gone.safetensors"
    kept.write_bytes(b"k")
    gone.write_bytes(b"g")
    save_settings(Settings(model=str(gone), model_files=[str(gone), str(kept)]))
    gone.unlink()
    with pytest.warns(UserWarning) as caught:
        loaded = load_settings()
    assert loaded.model_files == [str(kept)] and loaded.model == DEFAULT_MODEL
    assert [str(w.message) for w in caught] == [
        f"{settings_path()}: model file {gone} no longer exists; removed from the model menus"
    ]


def test_unused_file_name(tmp_path):
    assert unused_file_name(tmp_path, "m.safetensors") == tmp_path / "m.safetensors"
    (tmp_path / "m.safetensors").write_bytes(b"")
    (tmp_path / "m-2.safetensors").write_bytes(b"")
    assert unused_file_name(tmp_path, "m.safetensors") == tmp_path / "m-3.safetensors"
