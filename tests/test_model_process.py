"""The model's work in a process of its own (napari_clumps.model_process): what the Detect and
Fine-tune widgets run by default, so that PyTorch never holds the GUI process's GIL
(docs/reliability.md).

The tests share one process (starting one takes seconds: it imports PyTorch and loads the
model), but those that kill the session's process or look from a fresh interpreter."""

import os
import pickle
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from napari_clumps.io import read_image
from napari_clumps.model_process import (
    ModelProcess,
    ModelProcessEnded,
    _sendable,
    detection_items,
    shared_model_process,
)


@pytest.fixture(scope="module")
def two_galaxies(simulated):
    folder, _ = simulated
    return [read_image(path) for path in sorted(folder.glob("*.fits"))[:2]]


def _run(galaxies, model=None, **options):
    return dict(
        images=galaxies,
        names=[f"layer {i}" for i in range(len(galaxies))],
        model=model,
        device="cpu",
        nms_iou=0.3,
        score_floor=0.05,
        **options,
    )


@pytest.fixture(scope="module")
def process():
    started = ModelProcess("detect")
    yield started
    started.close()


def _never():
    return False


def test_the_process_gives_what_a_thread_gives(process, two_galaxies):
    there = list(process.items(_never, **_run(two_galaxies)))
    here = list(detection_items(should_stop=_never, **_run(two_galaxies)))
    assert [item[0] for item in there] == ["ready", "result", "result"], there
    assert [item[0] for item in here] == [item[0] for item in there]
    assert there[0] == here[0] and there[0][1].endswith(" on cpu")
    for (_, name, result, _), (_, name_here, result_here, _) in zip(there[1:], here[1:]):
        assert name == name_here and not result.error
        assert len(result.table) > 0, "the simulated galaxies have clumps to find"
        # the same up to float rounding: the process runs PyTorch on one thread fewer
        pd.testing.assert_frame_equal(result.table, result_here.table, rtol=1e-4)


def test_stopping_ends_the_run_between_images_and_the_process_serves_the_next(process, two_galaxies):
    items = list(process.items(lambda: True, **_run(two_galaxies * 4)))  # stopped as soon as it is sent
    results = [item for item in items if item[0] == "result"]
    assert len(results) < 8, "stopped before its last image (two batches of 4)"
    again = list(process.items(_never, **_run(two_galaxies[:1])))
    assert [item[0] for item in again] == ["ready", "result"], "the next run is not stopped"
    assert process.is_alive()


def test_a_run_given_up_half_way_is_stopped_and_leaves_nothing_for_the_next(process, two_galaxies, monkeypatch):
    sent = []
    send = process._send
    monkeypatch.setattr(process, "_send", lambda message: (sent.append(message), send(message)))
    run = process.items(_never, **_run(two_galaxies * 2))
    assert next(run)[0] == "ready"
    run.close()  # as a quit worker's generator is closed
    [number] = [message[1] for message in sent if message[0] == "run"]
    assert ("stop", number) in sent, "the process is told to drop the run"
    names = [item[1] for item in process.items(_never, **_run(two_galaxies[:1])) if item[0] == "result"]
    assert names == ["layer 0"], "only the new run's own result"


def test_stopping_one_run_leaves_the_others_of_the_process_alone(process, two_galaxies):
    """Two widgets may share a job's process (Fine-tune and the review queue): a run's stop is its own."""
    import threading

    stopped = threading.Event()
    first = process.items(stopped.is_set, **_run(two_galaxies * 4))
    assert next(first)[0] == "ready"
    second = process.items(_never, **_run(two_galaxies[:1]))  # waits in the process behind the first
    stopped.set()
    assert len([item for item in first if item[0] == "result"]) < 8
    assert [item[0] for item in second] == ["ready", "result"]


def test_a_model_file_that_does_not_load_is_reported_as_such(process, two_galaxies, tmp_path):
    broken = tmp_path / "truncated.safetensors"
    broken.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{")
    items = list(process.items(_never, **_run(two_galaxies, model=str(broken))))
    assert len(items) == 1 and items[0][0] == "model failed", items
    assert "truncated.safetensors" in items[0][1] and items[0][2] == str(broken)


def test_a_process_killed_mid_run_ends_the_run_with_a_crash_and_a_new_one_starts(two_galaxies):
    first = shared_model_process("detect")
    assert shared_model_process("detect") is first, "one process for the session"
    run = first.items(_never, **_run(two_galaxies * 4))
    assert next(run)[0] == "ready"
    os.kill(first.pid, signal.SIGKILL)
    rest = list(run)
    assert rest[-1][0] == "crash" and isinstance(rest[-1][1], ModelProcessEnded)
    assert f"exit code {-signal.SIGKILL}" in str(rest[-1][1])
    second = shared_model_process("detect")
    assert second is not first and second.pid != first.pid
    assert [item[0] for item in second.items(_never, **_run(two_galaxies[:1]))] == ["ready", "result"]
    second.close()


def test_a_crash_crosses_the_pipe_even_when_its_exception_does_not_pickle(capsys):
    class Unpicklable(Exception):
        def __reduce__(self):
            raise TypeError("no")

    kind, error = _sendable(("crash", Unpicklable("deep in torch")))
    assert kind == "crash" and str(pickle.loads(pickle.dumps(error))) == "Unpicklable: deep in torch"
    assert "deep in torch" in capsys.readouterr().err, "its traceback is printed in the process"
    assert any("in the model's process" in note for note in error.__notes__), "and goes with it"
    assert str(_sendable(Unpicklable("a review item"))) == "Unpicklable: a review item"  # yielded bare
    built_in = _sendable(("crash", KeyError("boxes")))[1]
    assert type(built_in) is KeyError and built_in.args == ("boxes",)
    assert type(_sendable(OSError(28, "No space left on device"))) is OSError
    assert _sendable(("error", "out of memory")) == ("error", "out of memory")


def test_the_calling_process_never_imports_pytorch(simulated):
    """The point of the process: the GUI's never pays PyTorch's import (or its GIL)."""
    folder, _ = simulated
    script = f"""
import sys
from pathlib import Path
from napari_clumps.model_process import shared_model_process
from napari_clumps.io import read_image
images = [read_image(p) for p in sorted(Path({str(folder)!r}).glob("*.fits"))[:1]]
process = shared_model_process("detect")
kinds = [item[0] for item in process.items(lambda: False, images=images, names=["a"], model=None,
         device="cpu", nms_iou=0.3)]
process.close()
print(kinds, "torch" in sys.modules)
"""
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split("\n")[-2] == "['ready', 'result'] False", run.stdout


@pytest.fixture(scope="module")
def two_labelled(simulated, tmp_path_factory):
    from napari_clumps.detections import write_detections
    from napari_clumps.training import load_labelled_images

    folder, truth = simulated
    paths = sorted(folder.glob("*.fits"))[:2]
    csv = write_detections(truth[truth.image.isin([p.name for p in paths])], tmp_path_factory.mktemp("l") / "t.csv")
    return load_labelled_images(paths, csv)[0]


@pytest.fixture(scope="module")
def fine_tuning():
    started = ModelProcess("fine-tune")
    yield started
    started.close()


def test_a_fine_tuning_in_the_process_reports_its_steps_and_writes_the_file(
    fine_tuning, two_labelled, tmp_path, monkeypatch
):
    from napari_clumps.model import load_model
    from napari_clumps.training import TrainingOptions, TrainingProgress

    monkeypatch.chdir(tmp_path)  # after the process started: a relative path is this folder's there too
    out = Path("tuned.safetensors")
    options = TrainingOptions(epochs=1, val_fraction=0.0)
    items = list(fine_tuning.items(_never, items=two_labelled, model=None, options=options, out=out))
    kinds = [kind for kind, _ in items]
    assert kinds[0] == "report" and kinds[-1] == "returned" and set(kinds) == {"report", "returned"}, kinds
    steps = [payload for kind, payload in items if isinstance(payload, TrainingProgress) and payload.kind == "step"]
    assert steps and steps[-1].epoch == 1
    kind, message, path = items[-1][1]
    assert kind == "ok" and path == str(out) and message.startswith(f"saved {out} (1 epochs"), items[-1]
    assert load_model(out).provenance["epochs_run"] == 1


def test_a_fine_tuning_stopped_in_the_process_leaves_the_file_alone(fine_tuning, two_labelled, tmp_path):
    from napari_clumps.training import TrainingOptions

    out = tmp_path / "tuned.safetensors"
    out.write_bytes(b"the model before")
    seen = []

    def at_the_first_step():
        return any(getattr(payload, "kind", None) == "step" for _, payload in seen)

    for item in fine_tuning.items(
        at_the_first_step, items=two_labelled, model=None, options=TrainingOptions(epochs=20, val_fraction=0.0), out=out
    ):
        seen.append(item)
    kind, message, path = seen[-1][1]
    assert kind == "cancelled" and path is None and "unchanged" in message, seen[-1]
    assert out.read_bytes() == b"the model before"


def test_a_base_model_file_that_does_not_load_is_named_in_the_outcome(fine_tuning, two_labelled, tmp_path):
    from napari_clumps.training import TrainingOptions

    broken = tmp_path / "nan.safetensors"
    broken.write_bytes(b"not a model")
    run = dict(items=two_labelled, model=str(broken), options=TrainingOptions(epochs=1), out=tmp_path / "o.safetensors")
    [(kind, (outcome, message, path))] = list(fine_tuning.items(_never, **run))
    assert (kind, outcome, path) == ("returned", "error", str(broken)) and "nan.safetensors" in message


def test_there_is_no_such_job():
    with pytest.raises(ValueError, match="train: no such job; the jobs are detect, fine-tune"):
        ModelProcess("train")


def test_the_review_job_ranks_and_detects_and_refuses_a_broken_model(simulated, tmp_path):
    from napari_clumps.model_process import ModelRefused

    folder, _ = simulated
    paths = [str(p) for p in sorted(folder.glob("*.fits"))[:2]]
    review = ModelProcess("review")
    try:
        ranked = list(review.items(_never, per_image="priorities", paths=paths, names=["a", "b"], model=None))
        assert [row["image"] for row in ranked] == ["a", "b"] and all(row["priority"] >= 0 for row in ranked)
        found = list(review.items(_never, per_image="detections", paths=paths[:1], names=["a"], model=None))
        assert len(found) == 1 and found[0].name == "a" and not found[0].error
        broken = tmp_path / "broken.safetensors"
        broken.write_bytes(b"not a model")
        [refused] = list(review.items(_never, per_image="detections", paths=paths, names=["a", "b"], model=str(broken)))
        assert (
            isinstance(refused, ModelRefused)
            and refused.model == str(broken)
            and "broken.safetensors" in refused.message
        )
    finally:
        review.close()


def test_a_fine_tuning_process_killed_mid_training_leaves_the_file_alone(two_labelled, tmp_path):
    from napari_clumps.training import TrainingOptions

    out = tmp_path / "tuned.safetensors"
    out.write_bytes(b"the model before")
    training = ModelProcess("fine-tune")
    items = []
    run = dict(items=two_labelled, model=None, options=TrainingOptions(epochs=20, val_fraction=0.0), out=out)
    for item in training.items(_never, **run):
        items.append(item)
        if getattr(item[1], "kind", None) == "step" and training.is_alive():
            os.kill(training.pid, signal.SIGKILL)
    assert items[-1][0] == "crash" and "the fine-tune process ended (exit code -9)" in str(items[-1][1])
    assert out.read_bytes() == b"the model before"


def test_a_run_from_a_folder_that_was_removed_still_runs(process, two_galaxies, tmp_path, monkeypatch):
    gone = tmp_path / "gone"
    gone.mkdir()
    monkeypatch.chdir(gone)
    gone.rmdir()  # the GUI's current folder deleted under it: os.getcwd() fails
    items = list(process.items(_never, **_run(two_galaxies[:1])))
    assert [item[0] for item in items] == ["ready", "result"] and process.is_alive()


def test_what_the_process_logs_is_logged_here(two_galaxies, caplog):
    """At the levels this process's loggers had when it started the process (here: INFO)."""
    import logging

    caplog.set_level(logging.INFO, logger="napari_clumps")
    logging_process = ModelProcess("detect")
    try:
        assert [item[0] for item in logging_process.items(_never, **_run(two_galaxies[:1]))] == ["ready", "result"]
        started = [r for r in caplog.records if r.name == "napari_clumps.model_process" and "runs PyTorch" in r.message]
        assert len(started) == 1, caplog.text
        assert started[0].process == logging_process.pid != os.getpid()
        assert started[0].getMessage().startswith(f"the detect process (pid {logging_process.pid}) runs PyTorch ")
    finally:
        logging_process.close()


def test_an_item_that_does_not_unpickle_here_ends_the_run_with_one_line_not_a_hang(two_galaxies):
    """The bytes came whole, but what they name does not import in this process."""
    broken = ModelProcess("detect")
    real = broken._connection

    class NotImportableHere:
        def recv(self):
            real.recv()
            raise ModuleNotFoundError("No module named 'only_in_the_model_process'")

        def __getattr__(self, name):
            return getattr(real, name)

    broken._connection = NotImportableHere()  # the reader's next item (its first may have come already)
    items = list(broken.items(_never, **_run(two_galaxies * 2)))
    assert [item[0] for item in items[:-1]] in ([], ["ready"]), items
    kind, error = items[-1]
    assert kind == "crash" and isinstance(error, ModelProcessEnded), items
    assert "the detect process ended" in str(error) and "only_in_the_model_process" in str(error)
    assert "\n" not in str(error), "one line"
    assert not broken.is_alive(), "a process whose items cannot be read here is ended"
    assert list(broken.items(_never, **_run(two_galaxies[:1]))) == [("crash", broken._ended)], "and says so after"


def test_after_each_run_the_process_gives_back_the_gpu_memory_it_cached(monkeypatch):
    """What the process does after a run, called here: with a GPU in use (faked), PyTorch's cache
    is emptied whether the run ended well or crashed; without one, nothing is asked of CUDA."""
    import torch

    from napari_clumps.model_process import _DONE, _run

    emptied = []
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: emptied.append(True))
    sent = []
    connection = SimpleNamespace(send=sent.append)

    def fine(send, should_stop):
        send("an item")

    def crashing(send, should_stop):
        raise RuntimeError("CUDA error: an illegal memory access")

    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    _run(fine, connection, 1, {}, set())
    assert sent == [(1, "an item"), (1, _DONE)] and emptied == []
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    _run(fine, connection, 2, {}, set())
    _run(crashing, connection, 3, {}, set())
    assert len(emptied) == 2
    assert sent[-2][1][0] == "crash" and sent[-1] == (3, _DONE)


def test_a_process_whose_cuda_failed_says_the_run_ended_and_serves_no_more(monkeypatch):
    """After an illegal memory access CUDA fails for the process's life: emptying the cache fails
    too. The run still ends (its crash, then its end) and the process is to exit."""
    import torch

    from napari_clumps.model_process import _DONE, _run

    def broken():
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "empty_cache", broken)
    sent = []
    connection = SimpleNamespace(send=sent.append)

    def crashing(send, should_stop):
        broken()

    assert _run(crashing, connection, 4, {}, set()) is False
    assert sent[0][1][0] == "crash" and sent[-1] == (4, _DONE)


@pytest.fixture
def logging_to(monkeypatch):
    """What the process's logging sends (``_log_to`` with a fake connection), in this process:
    the root logger's handlers, level and Python's warnings are put back after."""
    import logging

    from napari_clumps.model_process import _log_to

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    sent = []

    def start(send=sent.append):
        _log_to(SimpleNamespace(send=send), {"": logging.INFO})
        return sent

    yield start
    root.handlers[:] = handlers
    root.setLevel(level)
    logging.captureWarnings(False)


def test_a_log_record_crosses_as_its_plain_fields(logging_to):
    import logging
    import threading

    sent = logging_to()
    logging.getLogger("napari_clumps.training").warning("%d boxes", 3, extra={"lock": threading.Lock()})
    [(number, fields)] = sent
    assert number == 0 and "lock" not in fields, "a lock does not pickle"
    record = logging.makeLogRecord(pickle.loads(pickle.dumps(fields)))
    assert (record.name, record.levelno, record.getMessage()) == ("napari_clumps.training", logging.WARNING, "3 boxes")


def test_a_record_logged_while_one_is_sent_and_a_forked_childs_records_are_not_sent(logging_to, monkeypatch):
    import logging

    sent = []

    def send_and_warn(message):  # as a warning of the pickling would
        sent.append(message)
        logging.getLogger("py.warnings").warning("while sending")

    logging_to(send_and_warn)
    logging.getLogger("napari_clumps").warning("one")
    assert [fields["msg"] for _, fields in sent] == ["one"], "no echo, no recursion"
    monkeypatch.setattr(os, "getpid", lambda: -1)  # a data loader's forked worker
    logging.getLogger("napari_clumps").warning("from a fork")
    assert len(sent) == 1
