"""AtomicCheckpointer: a save interrupted half-way never becomes the checkpoint that a run resumes from."""

import time

import pytest
import torch
from speechbrain.utils.checkpoints import Checkpointer, mark_as_loader, mark_as_saver, register_checkpoint_hooks

from speechbrain_ext.checkpoints import (
    CHECKSUM_FILE,
    CORRUPT_PREFIX,
    STAGING_PREFIX,
    AtomicCheckpointer,
    BrokenCheckpoint,
    NonFiniteState,
)


class Interrupted(Exception):
    """Stands for the process being killed while a file is written."""


@register_checkpoint_hooks
class TrainingState:
    """A recoverable whose save can be cut off after half of its bytes, like a kill -9 during torch.save."""

    def __init__(self, step=0):
        self.step = step
        self.cut_off = False

    @mark_as_saver
    def save(self, path):
        payload = {"step": self.step, "moments": torch.randn(1000)}
        if not self.cut_off:
            torch.save(payload, path)
            return
        torch.save(payload, path)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        raise Interrupted

    @mark_as_loader
    def load(self, path, end_of_epoch):
        self.step = torch.load(path)["step"]


def save_then_interrupt(checkpointer_class, folder):
    model, state = torch.nn.Linear(3, 3), TrainingState(step=5)
    checkpointer = checkpointer_class(folder, recoverables={"model": model, "state": state})
    checkpointer.save_checkpoint()
    state.step, state.cut_off = 9, True
    with pytest.raises(Interrupted):
        checkpointer.save_checkpoint()


def resumed_step(checkpointer_class, folder):
    """What a fresh run with the same save folder resumes at."""
    state = TrainingState()
    checkpointer_class(folder, recoverables={"model": torch.nn.Linear(3, 3), "state": state}).recover_if_possible()
    return state.step


def test_stock_checkpointer_resumes_from_the_half_written_save(tmp_path):
    # Why AtomicCheckpointer exists: SpeechBrain marks the folder as a checkpoint before writing the files.
    save_then_interrupt(Checkpointer, tmp_path)
    with pytest.raises(Exception):  # noqa: B017 - EOFError or an unpickling error, by torch version
        resumed_step(Checkpointer, tmp_path)


def test_interrupted_save_leaves_the_last_complete_checkpoint(tmp_path):
    save_then_interrupt(AtomicCheckpointer, tmp_path)
    assert len(list(tmp_path.glob("CKPT+*"))) == 1
    assert len(list(tmp_path.glob(STAGING_PREFIX + "*"))) == 1
    assert resumed_step(AtomicCheckpointer, tmp_path) == 5
    assert resumed_step(Checkpointer, tmp_path) == 5  # the folders stay readable by SpeechBrain's own class


def test_next_save_removes_the_leftover_and_publishes_a_whole_checkpoint(tmp_path, caplog):
    save_then_interrupt(AtomicCheckpointer, tmp_path)
    state = TrainingState(step=12)
    checkpointer = AtomicCheckpointer(tmp_path, recoverables={"model": torch.nn.Linear(3, 3), "state": state})
    with caplog.at_level("WARNING"):
        checkpointer.save_and_keep_only(num_to_keep=1)
    assert "Removed 1 incomplete checkpoint folder" in caplog.text
    assert not list(tmp_path.glob(STAGING_PREFIX + "*"))
    (only,) = tmp_path.glob("CKPT+*")
    assert sorted(p.name for p in only.iterdir()) == ["CKPT.yaml", CHECKSUM_FILE, "model.ckpt", "state.ckpt"]
    assert resumed_step(AtomicCheckpointer, tmp_path) == 12


def test_named_checkpoint_saved_again_is_replaced_whole(tmp_path):
    state = TrainingState(step=1)
    checkpointer = AtomicCheckpointer(tmp_path, recoverables={"model": torch.nn.Linear(3, 3), "state": state})
    first = checkpointer.save_checkpoint(name="latest", meta={"round": 1})
    state.step = 2
    second = checkpointer.save_checkpoint(name="latest", meta={"round": 2})
    assert first.path == second.path and second.path.name == "CKPT+latest"
    assert [c.meta["round"] for c in checkpointer.list_checkpoints()] == [2]
    assert resumed_step(AtomicCheckpointer, tmp_path) == 2


def test_swap_interrupted_between_renames_gets_the_old_version_back(tmp_path):
    state = TrainingState(step=3)
    checkpointer = AtomicCheckpointer(tmp_path, recoverables={"model": torch.nn.Linear(3, 3), "state": state})
    saved = checkpointer.save_checkpoint(name="latest")
    saved.path.rename(saved.path.with_name(STAGING_PREFIX + "replaced-" + saved.path.name))
    assert checkpointer.remove_incomplete() == 0
    assert resumed_step(AtomicCheckpointer, tmp_path) == 3


def two_checkpoints(folder):
    """An older and a newer checkpoint of a model, its optimizer and an epoch counter (epochs 1 and 2)."""
    from speechbrain.utils.epoch_loop import EpochCounter

    model = torch.nn.Linear(3, 3)
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.randn(2, 3)).sum().backward()
    optimizer.step()
    counter = EpochCounter(10)
    checkpointer = AtomicCheckpointer(folder, {"model": model, "optimizer": optimizer, "counter": counter})
    counter.current = 1
    older = checkpointer.save_checkpoint(meta={"epoch": 1})
    time.sleep(0.01)  # distinct recency
    counter.current = 2
    newer = checkpointer.save_checkpoint(meta={"epoch": 2})
    return older, newer


def fresh_checkpointer(folder):
    from speechbrain.utils.epoch_loop import EpochCounter

    model = torch.nn.Linear(3, 3)
    counter = EpochCounter(10)
    objects = {"model": model, "optimizer": torch.optim.Adam(model.parameters()), "counter": counter}
    return AtomicCheckpointer(folder, objects), counter


CORRUPTIONS = {
    "truncated model.ckpt": lambda c: (c / "model.ckpt").write_bytes((c / "model.ckpt").read_bytes()[:100]),
    "empty optimizer.ckpt": lambda c: (c / "optimizer.ckpt").write_bytes(b""),
    "garbage counter.ckpt": lambda c: (c / "counter.ckpt").write_text("not a number"),
    "unparsable CKPT.yaml": lambda c: (c / "CKPT.yaml").write_text("{[: : ]"),
    "CKPT.yaml of the wrong shape": lambda c: (c / "CKPT.yaml").write_text("just some words"),
}


@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
def test_a_broken_latest_checkpoint_falls_back_to_the_older_one(corruption, tmp_path, caplog):
    older, newer = two_checkpoints(tmp_path)
    CORRUPTIONS[corruption](newer.path)
    checkpointer, counter = fresh_checkpointer(tmp_path)
    with caplog.at_level("WARNING"):
        loaded = checkpointer.recover_if_possible()
    assert loaded.path == older.path and counter.current == 1
    assert str(newer.path) in caplog.text  # reported by path
    assert not newer.path.exists() and (tmp_path / (CORRUPT_PREFIX + newer.path.name)).is_dir()  # kept aside
    # The next run meets only the good checkpoint, and new saves rotate normally.
    checkpointer, counter = fresh_checkpointer(tmp_path)
    assert checkpointer.recover_if_possible().path == older.path
    checkpointer.save_and_keep_only(num_to_keep=1)
    assert len(list(tmp_path.glob("CKPT+*"))) == 1


def test_when_no_checkpoint_loads_the_error_names_each_and_nothing_is_moved(tmp_path):
    older, newer = two_checkpoints(tmp_path)
    for checkpoint in (older, newer):
        CORRUPTIONS["empty optimizer.ckpt"](checkpoint.path)
    checkpointer, _ = fresh_checkpointer(tmp_path)
    with pytest.raises(RuntimeError, match="no checkpoint in .* loads") as raised:
        checkpointer.recover_if_possible()
    assert str(older.path) in str(raised.value) and str(newer.path) in str(raised.value)
    assert older.path.is_dir() and newer.path.is_dir()


def test_a_model_that_no_longer_matches_its_checkpoints_is_an_error_not_a_fallback(tmp_path):
    two_checkpoints(tmp_path)
    model = torch.nn.Linear(4, 4)  # the user changed the width
    checkpointer = AtomicCheckpointer(tmp_path, {"model": model}, allow_partial_load=True)
    with pytest.raises(RuntimeError, match="size mismatch"):
        checkpointer.recover_if_possible()
    assert len(list(tmp_path.glob("CKPT+*"))) == 2


def flip_bit(path, offset):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x10
    path.write_bytes(bytes(data))


def test_a_flipped_bit_in_the_weights_is_a_broken_checkpoint_not_a_model(tmp_path, caplog):
    older, newer = two_checkpoints(tmp_path)
    weights = newer.path / "model.ckpt"
    flip_bit(weights, weights.stat().st_size - 200)  # inside the tensor data: still a loadable file
    checkpointer, counter = fresh_checkpointer(tmp_path)
    with caplog.at_level("WARNING"):
        loaded = checkpointer.recover_if_possible()
    assert loaded.path == older.path and counter.current == 1
    assert "model.ckpt changed since the checkpoint was saved" in caplog.text
    assert (tmp_path / (CORRUPT_PREFIX + newer.path.name)).is_dir()
    with pytest.raises(BrokenCheckpoint, match="checksum mismatch"):
        AtomicCheckpointer.verify(type(older)(tmp_path / (CORRUPT_PREFIX + newer.path.name), {}, {}))


def test_a_fallback_applies_nothing_of_the_broken_checkpoint(tmp_path):
    """The newest checkpoint is mid-epoch (a data loader position); its optimizer file is emptied. The older one is
    end-of-epoch: resuming from it starts the epoch from its first batch, not from the broken one's position."""
    from speechbrain.dataio.dataloader import SaveableDataLoader

    def objects():
        model = torch.nn.Linear(3, 3)
        loader = SaveableDataLoader(list(range(20)), batch_size=2)
        # In a Brain, the training loader is added before the optimizer (make_dataloader, then on_fit_start).
        return model, loader, {"model": model, "loader": loader, "optimizer": torch.optim.Adam(model.parameters())}

    model, loader, recoverables = objects()
    checkpointer = AtomicCheckpointer(tmp_path, recoverables)
    older = checkpointer.save_checkpoint(end_of_epoch=True)
    time.sleep(0.01)
    iterator = iter(loader)
    for _ in range(7):
        next(iterator)
    with torch.no_grad():
        model.weight.add_(1.0)
    newer = checkpointer.save_checkpoint(end_of_epoch=False)
    (newer.path / "optimizer.ckpt").write_bytes(b"")

    resumed_model, resumed_loader, recoverables = objects()
    assert AtomicCheckpointer(tmp_path, recoverables).recover_if_possible().path == older.path
    assert resumed_loader._speechbrain_recovery_skip_to is None  # nothing of the broken checkpoint
    assert len(list(resumed_loader)) == 10
    assert torch.equal(resumed_model.weight, torch.load(older.path / "model.ckpt")["weight"])


@register_checkpoint_hooks
class FlakyState:
    """A recoverable whose first ``failures`` loads fail with an I/O error (a network file system's hiccup)."""

    def __init__(self, failures=1):
        self.failures, self.value = failures, None

    @mark_as_saver
    def save(self, path):
        torch.save({"value": 42}, path)

    @mark_as_loader
    def load(self, path, end_of_epoch):
        if self.failures:
            self.failures -= 1
            raise OSError(5, "Input/output error")
        self.value = torch.load(path, weights_only=True)["value"]


def test_a_transient_read_error_is_retried_not_taken_for_corruption(tmp_path, monkeypatch):
    monkeypatch.setattr("speechbrain_ext.checkpoints.RETRY_DELAY_S", 0.0)
    older, newer = two_checkpoints(tmp_path)
    AtomicCheckpointer(tmp_path, {"flaky": FlakyState()}, allow_partial_load=True).save_checkpoint()
    flaky = FlakyState(failures=1)
    loaded = AtomicCheckpointer(tmp_path, {"flaky": flaky}).recover_if_possible()
    assert flaky.value == 42 and loaded.path.exists()
    assert not list(tmp_path.glob(CORRUPT_PREFIX + "*"))

    # An error that persists is a broken checkpoint: the older one is used.
    flaky = FlakyState(failures=100)
    checkpointer = AtomicCheckpointer(tmp_path, {"flaky": flaky}, allow_partial_load=True)
    assert checkpointer.recover_if_possible().path == newer.path
    assert len(list(tmp_path.glob(CORRUPT_PREFIX + "*"))) == 1


def test_non_finite_weights_are_never_checkpointed(tmp_path):
    model = torch.nn.Linear(3, 3)
    checkpointer = AtomicCheckpointer(tmp_path, {"model": model})
    good = checkpointer.save_checkpoint()
    with torch.no_grad():
        model.bias[1] = float("nan")
    with pytest.raises(NonFiniteState, match=r"model\.bias hold NaN or infinite values"):
        checkpointer.save_checkpoint()
    assert [c.path for c in checkpointer.list_checkpoints()] == [good.path]
    assert not list(tmp_path.glob(STAGING_PREFIX + "*"))
