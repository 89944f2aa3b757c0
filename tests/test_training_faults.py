"""Training faults: cancel, SIGTERM/Ctrl-C, a NaN loss and running out of GPU memory leave the model
file the user asked for byte-identical and say what happened and where the best epoch so far is.

The model trained is resnet10t without pretrained weights on 96 px simulated galaxies (seconds on
a CPU); faults are injected with forward hooks on the network (they travel with the copy that
:func:`~napari_clumps.training.train` trains), so the trainer's own checks do the catching.
"""

import hashlib
import re
import signal
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch
from test_streaming import subprocess_env

from napari_clumps.inference import as_galaxy_image
from napari_clumps.model import load_model, new_detector, save_model
from napari_clumps.simulate import SimulationSettings, simulate_galaxy, write_dataset
from napari_clumps.training import (
    LabelledImage,
    TrainingCancelled,
    TrainingError,
    TrainingOptions,
    fine_tune,
    partial_path,
    train,
)

SMALL = SimulationSettings(size=96, disc_scale_px=(12.0, 20.0))
OPTIONS = TrainingOptions(epochs=3, batch_size=2, trainable_blocks=None, val_fraction=0)


def _items(n, seed=0):
    """Small simulated galaxies (96 px) with their truth boxes."""
    from napari_clumps.composite import lupton_composite

    items = []
    for i in range(n):
        galaxy = simulate_galaxy(seed, i, SMALL)
        image = as_galaxy_image(lupton_composite(galaxy.bands, ("g", "r", "i")), name=f"g{i}")
        boxes = galaxy.truth_boxes()
        items.append(LabelledImage(image, boxes, np.ones(len(boxes), int), f"g{i}"))
    return items


def _tiny():
    torch.manual_seed(0)
    return new_detector("resnet10t", backbone_weights=None)


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def previous_model(tmp_path):
    """The user's previous model, where the new one is to go."""
    detector = _tiny()
    detector.provenance = {"model_id": "previous"}
    return save_model(detector, tmp_path / "model.safetensors")


def test_cancel_mid_run_leaves_the_file_and_keeps_the_best_epoch_aside(previous_model):
    out, before = previous_model, _digest(previous_model)
    steps = []
    with pytest.raises(TrainingCancelled) as info:
        train(
            _tiny(),
            _items(6),  # 3 steps an epoch
            OPTIONS,
            out=out,
            callback=lambda p: steps.append(p) if p.kind == "step" else None,
            should_stop=lambda: len(steps) >= 4,
        )
    partial = partial_path(out)
    assert partial.name == "model.partial.safetensors"
    assert str(info.value) == (
        f"cancelled in epoch 2, step 2; {out} is unchanged; the best epoch so far (epoch 1) is in {partial}"
    )
    assert info.value.checkpoint == partial
    assert _digest(out) == before
    assert load_model(partial).provenance["epochs_run"] == 1
    assert not list(out.parent.glob("*.part"))  # no temporary file left behind
    # the same training, not stopped: the file is replaced at the end and the partial one goes
    trained = train(_tiny(), _items(6), replace(OPTIONS, epochs=1), out=out)
    assert _digest(out) != before and not partial.exists()
    assert load_model(out).provenance["epochs_run"] == trained.provenance["epochs_run"] == 1


def _nan_loss_after(n_calls):
    """A forward hook making every training loss NaN after ``n_calls`` training passes."""
    calls = []

    def hook(module, args, output):
        if not module.training:
            return output
        calls.append(1)
        return {k: v * float("nan") for k, v in output.items()} if len(calls) > n_calls else output

    return hook


def test_a_nan_loss_mid_run_leaves_the_file_and_says_so(previous_model):
    out, before = previous_model, _digest(previous_model)
    detector = _tiny()
    detector.network.register_forward_hook(_nan_loss_after(5))  # epoch 2, step 2
    with pytest.raises(TrainingError) as info:
        train(detector, _items(8), OPTIONS, out=out)
    message = str(info.value)
    assert message.startswith("the loss became nan in epoch 2; lower the learning rate; ")
    assert f"{out} is unchanged; the best epoch so far (epoch 1) is in {partial_path(out)}" in message
    assert _digest(out) == before
    assert load_model(partial_path(out)).provenance["epochs_run"] == 1


def test_a_nan_loss_in_the_first_epoch_writes_nothing(tmp_path):
    out = tmp_path / "new.safetensors"
    detector = _tiny()
    detector.network.register_forward_hook(_nan_loss_after(0))
    with pytest.raises(TrainingError) as info:
        train(detector, _items(4), OPTIONS, out=out)
    assert str(info.value) == (
        f"the loss became nan in epoch 1; lower the learning rate; nothing was written to {out}; no epoch of "
        "this run finished, so it saved no partial model"
    )
    assert info.value.checkpoint is None
    assert list(tmp_path.iterdir()) == []


def test_cancel_in_cross_validation_says_which_training_and_leaves_the_file(previous_model):
    out, before = previous_model, _digest(previous_model)
    steps = []
    with pytest.raises(TrainingCancelled) as info:
        fine_tune(
            _tiny(),
            _items(6),
            TrainingOptions(epochs=2, batch_size=2, trainable_blocks=None),
            out=out,
            callback=lambda p: steps.append(p) if p.kind == "step" else None,
            should_stop=lambda: len(steps) >= 1,
        )
    assert str(info.value) == f"cancelled in epoch 1, step 2 (cross-validation fold 1 of 3); {out} is unchanged"
    assert _digest(out) == before and not partial_path(out).exists()


def _out_of_memory_above(n_images, always=False):
    """A pre-hook that fails training passes of more than ``n_images`` images (or every one) the
    way CUDA does when memory runs out."""

    def hook(module, args):
        if module.training and (always or len(args[0]) > n_images):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    return hook


def test_out_of_memory_goes_on_with_fewer_images_at_a_time(previous_model):
    detector = _tiny()
    detector.network.register_forward_pre_hook(_out_of_memory_above(1))
    notes, losses = [], []

    def callback(progress):
        if progress.kind == "note":
            notes.append(progress.note)
        elif progress.kind == "step":
            losses.append(progress.loss)

    options = TrainingOptions(epochs=1, batch_size=4, trainable_blocks=None, val_fraction=0)
    trained = train(detector, _items(4), options, out=previous_model, callback=callback)
    assert notes == [
        "out of memory on cpu with 4 images at a time: going on with 2 at a time (their gradients add up to the "
        "batch of 4's, so the training is the same)",
        "out of memory on cpu with 2 images at a time: going on with 1 at a time (their gradients add up to the "
        "batch of 4's, so the training is the same)",
    ]
    assert len(losses) == 1 and all(torch.isfinite(torch.tensor(losses)))  # still one step of 4 images
    assert all(torch.isfinite(p).all() for p in trained.network.parameters())
    assert load_model(previous_model).provenance["epochs_run"] == 1


def test_out_of_memory_with_one_image_at_a_time_stops_with_a_clear_message(previous_model):
    out, before = previous_model, _digest(previous_model)
    detector = _tiny()
    detector.network.register_forward_pre_hook(_out_of_memory_above(0, always=True))
    with pytest.raises(TrainingError) as info:
        train(detector, _items(4), OPTIONS, out=out)
    message = str(info.value)
    assert message.startswith("out of memory on cpu even with batch size 1 in epoch 1; train fewer encoder blocks")
    assert message.endswith(f"{out} is unchanged; no epoch of this run finished, so it saved no partial model")
    assert _digest(out) == before


@pytest.mark.parametrize(("signum", "status"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_cli_train_stopped_by_a_signal_leaves_the_file(signum, status, tmp_path, previous_model):
    """A real ``napari-clumps train`` process, sent SIGTERM (or Ctrl-C's SIGINT) once its first
    epoch is done: it stops at the next step, says so in its last line, and exits 143 (130)."""
    truth = write_dataset(tmp_path / "data", n=2, seed=3, settings=SMALL)  # 4 images (FITS + JPEG)
    out, before = previous_model, _digest(previous_model)
    command = [sys.executable, "-m", "napari_clumps", "train", "--images", str(tmp_path / "data")]
    command += ["--labels", str(truth), "--out", str(out), "--model", "resnet10t", "--backbone-weights", "none"]
    command += ["--epochs", "500", "--batch-size", "2", "--trainable-blocks", "-1", "--val-fraction", "0"]
    command += ["--device", "cpu"]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=subprocess_env())
    lines = []
    for line in process.stderr:  # the process's own lines, until its first epoch is done
        lines.append(line)
        if line.startswith("epoch 1/500"):
            process.send_signal(signum)
            break
    try:
        rest = process.communicate(timeout=300)[1]
    finally:
        process.kill()
    last = (lines + rest.splitlines())[-1].strip()
    assert process.returncode == status, "".join(lines) + rest
    name = signal.Signals(signum).name
    # the epoch it stops in depends on how soon the signal lands: epoch 2 or, on a busy machine, later
    expected = rf"stopped by {name}: cancelled in epoch \d+, step \d+; {re.escape(str(out))} is unchanged; "
    expected += rf"the best epoch so far \(epoch \d+\) is in {re.escape(str(partial_path(out)))}"
    assert re.fullmatch(expected, last), last
    assert f"{name}: stopping at the next training step" in rest
    assert _digest(out) == before
    assert load_model(partial_path(out)).provenance["n_train_images"] == 4


def test_detection_out_of_memory_goes_on_with_fewer_tiles_then_says_what_to_do():
    """Inference the same way: a batch that does not fit runs in halves (same detections); one
    tile that does not fit is an OutOfMemoryError whose message says what to do."""
    from napari_clumps.inference import iter_detections

    detector = _tiny()
    detector.provenance = {"model_id": "tiny"}  # run as a trained model: its boxes are noise, but the same
    images = [item.image for item in _items(3)]
    plain = [r.table for r in iter_detections(images, detector, device="cpu", batch_size=4, keep_off_host=True)]
    handle = detector.network.register_forward_pre_hook(_eval_out_of_memory_above(1))
    halved = [r.table for r in iter_detections(images, detector, device="cpu", batch_size=4, keep_off_host=True)]
    assert sum(len(t) for t in plain) > 0
    for a, b in zip(plain, halved):
        np.testing.assert_allclose(a[["x_min", "y_min", "score"]], b[["x_min", "y_min", "score"]], atol=1e-4)
    handle.remove()
    detector.network.register_forward_pre_hook(_eval_out_of_memory_above(0))
    with pytest.raises(torch.OutOfMemoryError, match="out of memory on cpu even with one 512 px tile at a time; "):
        list(iter_detections(images, detector, device="cpu"))


def _eval_out_of_memory_above(n_images):
    def hook(module, args):
        if not module.training and len(args[0]) > n_images:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    return hook
