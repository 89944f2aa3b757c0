"""Hostile and broken model files: refused with one line naming the file, nothing run, nothing cached.

Every broken file is made here from one small model file (resnet10t, no downloads); each case
says what :func:`~napari_clumps.model.load_model` must say, and whether the cheap header check
(:func:`~napari_clumps.model.check_model_file`, what the widgets run when a file is chosen)
already refuses it.
"""

import json
import os
import pickle

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from napari_clumps.model import (
    MODEL_FORMAT_VERSION,
    ModelError,
    check_model_file,
    get_detector,
    load_model,
    new_detector,
    save_model,
)


@pytest.fixture(scope="module")
def good_model(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("good") / "good.safetensors"
    detector = new_detector("resnet10t", backbone_weights=None)
    detector.provenance = {"model_id": "good"}  # a trained model as far as loading goes
    return save_model(detector, path)


def _parts(path):
    with safe_open(str(path), framework="pt") as handle:
        return {k: handle.get_tensor(k) for k in handle.keys()}, dict(handle.metadata())


def _rewrite(good, out, *, state=None, **metadata_changes):
    """``good`` written again to ``out`` with changed tensors or metadata strings."""
    tensors, metadata = _parts(good)
    if state is not None:
        tensors = state(tensors)
    metadata.update(metadata_changes)
    save_file(tensors, str(out), metadata=metadata)
    return out


def _config(good, **changes):
    config = json.loads(_parts(good)[1]["config"])
    config.update(changes)
    return json.dumps(config)


def _with_value(value):
    def change(tensors):
        key = next(k for k, v in tensors.items() if v.is_floating_point() and k.startswith("roi_heads"))
        tensors[key] = tensors[key].clone()
        tensors[key].view(-1)[3] = value
        return tensors

    return change


def _make(case, good, d):
    """(broken file, what the error says, whether the header check catches it)."""
    raw = good.read_bytes()
    out = d / f"{case}.safetensors"
    if case == "nan_weights":
        return _rewrite(good, out, state=_with_value(float("nan"))), "NaN or infinite values", False
    if case == "inf_weights":
        return _rewrite(good, out, state=_with_value(float("inf"))), "NaN or infinite values", False
    if case == "newer_format":
        version = str(MODEL_FORMAT_VERSION + 1)
        expected = (
            f"written by a newer napari-clumps (format {version}; this version reads up to {MODEL_FORMAT_VERSION}): "
            "upgrade"
        )
        return _rewrite(good, out, format_version=version), expected, True
    if case == "format_version_not_a_number":
        return _rewrite(good, out, format_version="one"), "malformed metadata: format_version 'one'", True
    if case == "config_not_json":
        return _rewrite(good, out, config="{backbone: resnet10t"), "malformed metadata: its config is not", True
    if case == "provenance_not_json":
        return _rewrite(good, out, provenance="[unclosed"), "malformed metadata: its provenance is not JSON", True
    if case == "unknown_config_key":
        config = _config(good, attention_heads=8)
        return _rewrite(good, out, config=config), "settings this version does not know (attention_heads)", True
    if case == "config_value_of_wrong_type":
        config = _config(good, fpn_channels="wide")
        return _rewrite(good, out, config=config), "config setting fpn_channels is 'wide', not a int", True
    if case == "unknown_kind":
        return _rewrite(good, out, config=_config(good, kind="vit-detr")), "unknown detector kind 'vit-detr'", True
    if case == "unknown_encoder":
        config = _config(good, timm_arch="no_such_net")
        return _rewrite(good, out, config=config), "unknown encoder architecture 'no_such_net'", False
    if case == "other_architecture":  # resnet10t weights, a resnet18 config: other tensors
        config = _config(good, timm_arch="resnet18", backbone="resnet18")
        return _rewrite(good, out, config=config), "weights do not fit its resnet18 architecture: ", False
    if case == "other_shapes":
        config = _config(good, fpn_channels=64)
        return _rewrite(good, out, config=config), "of another shape", False
    if case == "truncated":
        out.write_bytes(raw[: len(raw) // 2])
        return out, f"truncated: {len(raw) // 2} bytes of the {len(raw)} its header says", True
    if case == "truncated_in_header":
        out.write_bytes(raw[:100])
        return out, "not a napari-clumps model file", True
    if case == "empty":
        out.write_bytes(b"")
        return out, "not a napari-clumps model file", True
    if case == "random_bytes":
        out.write_bytes(os.urandom(4096))
        return out, "not a napari-clumps model file", True
    if case == "safetensors_of_something_else":
        save_file({"weight": torch.zeros(3)}, str(out))
        return out, "no napari-clumps-model metadata", True
    if case == "pickle_named_safetensors":  # a torch.save file (zip) under our name
        torch.save({"weight": torch.zeros(3)}, out)
        return out, "it is a PyTorch pickle", True
    raise AssertionError(case)


BROKEN = [
    "nan_weights",
    "inf_weights",
    "newer_format",
    "format_version_not_a_number",
    "config_not_json",
    "provenance_not_json",
    "unknown_config_key",
    "config_value_of_wrong_type",
    "unknown_kind",
    "unknown_encoder",
    "other_architecture",
    "other_shapes",
    "truncated",
    "truncated_in_header",
    "empty",
    "random_bytes",
    "safetensors_of_something_else",
    "pickle_named_safetensors",
]


@pytest.mark.parametrize("case", BROKEN)
def test_a_broken_model_file_is_one_line_naming_it(case, good_model, tmp_path):
    path, expected, header_check_catches = _make(case, good_model, tmp_path)
    with pytest.raises(ModelError) as info:
        load_model(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and expected in message and "\n" not in message, message
    if header_check_catches:  # refused when chosen in a widget, without reading the weights
        with pytest.raises(ModelError, match=expected.split("(")[0].strip()[:30]):
            check_model_file(path)
    else:  # only the weights tell: the header check lets it through, the full load refuses it
        assert check_model_file(path)["format"] == "napari-clumps-model"


def test_the_good_file_passes_both_checks(good_model):
    assert json.loads(check_model_file(good_model)["config"])["timm_arch"] == "resnet10t"
    assert load_model(good_model).model_id == "good"


class _Payload:
    """A pickle that, when unpickled, runs ``call(*args)`` (what a hostile checkpoint does)."""

    def __init__(self, call, args):
        self.call, self.args = call, args

    def __reduce__(self):
        return (self.call, self.args)


def _payloads(marker):
    return {
        "open_file": _Payload(open, (str(marker), "w")),
        "exec_code": _Payload(exec, (f"open({str(marker)!r}, 'w').close()",)),
        "os_system": _Payload(os.system, (f"touch {marker}",)),
    }


@pytest.mark.parametrize("payload", ["open_file", "exec_code", "os_system"])
@pytest.mark.parametrize("layout", ["zip", "legacy", "plain_pickle_named_pt", "named_safetensors"])
def test_a_pickle_payload_never_runs(payload, layout, tmp_path):
    marker = tmp_path / "payload_ran"
    evil = {"state_dict": {"module.backbone.weight": torch.zeros(2), "x": _payloads(marker)[payload]}}
    path = tmp_path / ("evil.safetensors" if layout == "named_safetensors" else "evil.pt")
    if layout == "zip" or layout == "named_safetensors":
        torch.save(evil, path)
    elif layout == "legacy":
        torch.save(evil, path, _use_new_zipfile_serialization=False)
    else:
        path.write_bytes(pickle.dumps(evil, protocol=4))  # STACK_GLOBAL opcodes
    for check in (check_model_file, load_model):
        with pytest.raises(ModelError) as info:
            check(path)
        message = str(info.value)
        assert message.startswith(f"{path}: ") and "\n" not in message
        if layout == "named_safetensors":
            assert "it is a PyTorch pickle" in message and "not opened" in message
        else:
            assert "refused" in message and "could run code" in message, message
    assert not marker.exists()


@pytest.mark.parametrize("case", ["nan", "truncated", "other_architecture", "random_bytes", "not_tensors"])
def test_a_broken_paper_checkpoint_is_one_line_naming_it(case, tmp_path):
    path = tmp_path / f"{case}.pth"
    if case == "nan":  # refused before the network is built
        torch.save({"module.backbone.body.conv1.weight": torch.full((2, 2), float("nan"))}, path)
        expected = "NaN or infinite values"
    elif case == "truncated":
        torch.save({"module.w": torch.zeros(1000)}, path)
        path.write_bytes(path.read_bytes()[:600])
        expected = "not a PyTorch checkpoint, or damaged"
    elif case == "other_architecture":  # a classifier's state dict, not the paper's detector
        torch.save({"module.conv1.weight": torch.zeros(64, 3, 7, 7), "module.fc.bias": torch.zeros(10)}, path)
        expected = "weights do not fit the paper's 3-class fasterrcnn_resnet50_fpn: "
    elif case == "random_bytes":
        path.write_bytes(os.urandom(2048).replace(b"\x80", b"\x00").replace(b"PK", b"pk"))
        expected = "not a PyTorch checkpoint (neither a zip archive nor a pickle)"
    else:
        torch.save({"epoch": 3, "lr": 0.1}, path)
        expected = "not a state_dict"
    with pytest.raises(ModelError) as info:
        load_model(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and expected in message and "\n" not in message, message


def test_a_failed_load_leaves_the_cache_as_it_was(good_model, tmp_path):
    """Nothing half-loaded: the model loaded before a broken one is still the cached one."""
    import napari_clumps.model as model

    first = get_detector(str(good_model), "cpu")
    broken, *_ = _make("nan_weights", good_model, tmp_path)
    with pytest.raises(ModelError, match="NaN"):
        get_detector(str(broken), "cpu")
    assert [key[0] for key in model._LOADED] == [str(good_model.resolve())]
    assert get_detector(str(good_model), "cpu") is first
