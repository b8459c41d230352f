"""ResilientBrain and its parts: undecodable audio skipped and remembered, exact random state, run hyperparameters."""

import logging

import numpy as np
import pytest
import soundfile as sf
import torch

from speechbrain_ext.checkpoints import AtomicCheckpointer
from speechbrain_ext.data.audio import UndecodableList
from speechbrain_ext.data.dataset import audio_dataset
from speechbrain_ext.training import (
    HYPERPARAMS,
    PENDING_HYPERPARAMS,
    RandomState,
    ResilientBrain,
    check_training_options,
    collate_decoded,
    dynamic_batching,
    promote_run_hyperparams,
    write_run_hyperparams,
)


def write_truncated_flac(path, seconds=2.0, seed=0):
    """A FLAC whose header is intact (it says ``seconds`` long) and whose data stops half-way."""
    noise = 0.1 * np.random.default_rng(seed).standard_normal(int(16000 * seconds)).astype(np.float32)
    sf.write(path, noise, 16000, format="FLAC")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def small_corpus(folder, bad=("u2",)):
    """A manifest of four 1-2 s FLAC files, those named in ``bad`` truncated."""
    rows = ["ID,duration,wav"]
    for i in range(4):
        path = folder / f"u{i}.flac"
        if f"u{i}" in bad:
            write_truncated_flac(path, seed=i)
        else:
            sf.write(path, 0.1 * np.random.default_rng(i).standard_normal(16000 + 4000 * i), 16000, format="FLAC")
        rows.append(f"u{i},1.0,{path}")
    manifest = folder / "data.csv"
    manifest.write_text("\n".join(rows) + "\n")
    return manifest


def test_collate_leaves_out_undecoded_examples_and_gives_none_when_nothing_is_left():
    examples = [{"id": "a", "sig": torch.ones(3)}, {"id": "b", "sig": None}, {"id": "c", "sig": torch.ones(5)}]
    batch = collate_decoded(examples)
    assert batch.id == ["a", "c"] and batch.sig.data.shape == (2, 5)
    assert collate_decoded([{"id": "b", "sig": None}]) is None


def test_undecodable_file_is_skipped_logged_listed_and_left_out_of_the_next_run(tmp_path, caplog):
    manifest = small_corpus(tmp_path)
    cache = tmp_path / "run" / "audio_headers.json"
    report = tmp_path / "run" / "skipped_audio.txt"
    data = audio_dataset([manifest], 16000, header_cache=cache, report_file=report)
    assert len(data) == 4  # the header is fine: nothing says yet that the data is broken
    with caplog.at_level(logging.WARNING):
        signals = {item["id"]: item["sig"] for item in data}
    assert signals["u2"] is None and all(signals[u] is not None for u in ("u0", "u1", "u3"))
    assert "could not decode" in caplog.text and "u2.flac" in caplog.text
    listed = UndecodableList(cache.with_name(UndecodableList.NAME))
    assert listed.problem(str(tmp_path / "u2.flac")).reason == "undecodable"

    rerun = audio_dataset([manifest], 16000, header_cache=cache, report_file=report)
    assert sorted(item["id"] for item in rerun) == ["u0", "u1", "u3"]
    assert "u2.flac\tundecodable" in report.read_text()

    # A good copy of the file replaces the broken one: it is used again.
    sf.write(tmp_path / "u2.flac", np.zeros(16000, dtype=np.float32), 16000, format="FLAC")
    assert len(audio_dataset([manifest], 16000, header_cache=cache)) == 4


def test_check_decoding_finds_the_broken_file_before_training(tmp_path):
    manifest = small_corpus(tmp_path)
    cache = tmp_path / "run" / "audio_headers.json"
    data = audio_dataset([manifest], 16000, header_cache=cache, check_decoding=True)
    assert sorted(item["id"] for item in data) == ["u0", "u1", "u3"]
    assert UndecodableList(cache.with_name(UndecodableList.NAME)).problem(str(tmp_path / "u2.flac"))


class MeanBrain(ResilientBrain):
    """Fits a scalar to the mean absolute amplitude; logs what each stage saw."""

    def compute_forward(self, batch, stage):
        self.seen.extend(batch.id)
        return self.modules.scale(batch.sig.data.abs().mean(dim=1, keepdim=True))

    def compute_objectives(self, predictions, batch, stage):
        return ((predictions - 0.08) ** 2).mean()


def test_training_goes_on_when_a_whole_batch_fails_to_decode(tmp_path):
    manifest = small_corpus(tmp_path, bad=("u0", "u1"))
    data = audio_dataset([manifest], 16000, sort_by_duration=True)  # u0 and u1 form the first batch
    brain = MeanBrain(modules={"scale": torch.nn.Linear(1, 1)},
                      opt_class=lambda params: torch.optim.SGD(params, lr=0.1), run_opts={"device": "cpu"})
    brain.seen = []
    brain.fit(range(2), data, data, train_loader_kwargs={"batch_size": 2}, valid_loader_kwargs={"batch_size": 2})
    assert brain.seen == ["u2", "u3"] * 4  # 2 epochs of train + valid, the broken batch skipped each time
    loss = brain.evaluate(data, test_loader_kwargs={"batch_size": 2})
    assert np.isfinite(loss) and loss > 0  # the skipped batch did not pull the average towards 0


def test_random_state_of_an_end_of_epoch_checkpoint_applies_at_once_a_mid_epoch_one_at_the_next_batch(tmp_path):
    state = RandomState()
    torch.manual_seed(1)
    np.random.seed(1)
    checkpointer = AtomicCheckpointer(tmp_path, {"random_state": state})
    mid_epoch = checkpointer.save_checkpoint(end_of_epoch=False)
    expected = (torch.rand(2), np.random.rand(2))
    torch.manual_seed(2)
    np.random.seed(2)
    restored = RandomState()
    AtomicCheckpointer(tmp_path, {"random_state": restored}).load_checkpoint(mid_epoch)
    torch.rand(5)  # what a resumed run draws before its first batch (its data loader iterator)
    restored.apply_pending()
    assert torch.equal(torch.rand(2), expected[0]) and np.array_equal(np.random.rand(2), expected[1])
    restored.apply_pending()  # once only
    assert not torch.equal(torch.rand(2), expected[0])


HPARAMS = "seed: 3\nlr: 0.1\nrate: !ref <lr>\n"


def test_rerun_hyperparams_replace_the_folders_only_after_validation(tmp_path):
    yaml_file = tmp_path / "h.yaml"
    yaml_file.write_text(HPARAMS)
    out = tmp_path / "run"
    assert write_run_hyperparams(out, yaml_file, "lr: 0.2").name == HYPERPARAMS
    assert "rate: 0.2" in (out / HYPERPARAMS).read_text()
    assert not (out / "training.py").exists()  # SpeechBrain's copy of its caller, this package's module
    assert write_run_hyperparams(out, yaml_file, "lr: 0.5").name == PENDING_HYPERPARAMS  # a rerun
    assert "rate: 0.2" in (out / HYPERPARAMS).read_text()  # a rerun that fails now leaves this intact
    assert promote_run_hyperparams(out) and not (out / PENDING_HYPERPARAMS).exists()
    assert "rate: 0.5" in (out / HYPERPARAMS).read_text()
    assert not promote_run_hyperparams(out)


def test_a_brain_promotes_the_pending_hyperparams_after_validation(tmp_path):
    manifest = small_corpus(tmp_path, bad=())
    data = audio_dataset([manifest], 16000)
    yaml_file = tmp_path / "h.yaml"
    yaml_file.write_text(HPARAMS)
    out = tmp_path / "run"
    write_run_hyperparams(out, yaml_file, "")
    write_run_hyperparams(out, yaml_file, "lr: 0.7")
    brain = MeanBrain(modules={"scale": torch.nn.Linear(1, 1)},
                      opt_class=lambda params: torch.optim.SGD(params, lr=0.1), run_opts={"device": "cpu"},
                      hparams={"output_folder": str(out)})
    brain.seen = []
    with pytest.raises(ValueError, match="batch_size"):  # a run that fails before validating
        brain.fit(range(1), data, data, train_loader_kwargs={"batch_size": 0})
    assert "rate: 0.1" in (out / HYPERPARAMS).read_text()
    brain.fit(range(1), data, data, train_loader_kwargs={"batch_size": 2}, valid_loader_kwargs={"batch_size": 2})
    assert "rate: 0.7" in (out / HYPERPARAMS).read_text()




@pytest.mark.parametrize(("options", "message"), [
    ({"seconds_per_batch": 0}, "seconds_per_batch must be a positive number, got 0"),
    ({"seconds_per_batch": "400"}, "seconds_per_batch must be a positive number, got '400'"),
    ({"num_buckets": 1.5}, "num_buckets must be a positive integer, got 1.5"),
    ({"grad_accumulation_factor": True}, "grad_accumulation_factor must be a positive integer, got True"),
    ({"avoid_if_shorter_than": 60.0, "avoid_if_longer_than": 60.0}, "avoid_if_shorter_than=60.0 must be >= 0"),
    ({"avoid_if_shorter_than": -1.0}, "avoid_if_shorter_than=-1.0 must be >= 0"),
])
def test_each_bad_training_option_is_one_error_naming_it(options, message):
    with pytest.raises(ValueError, match=message):
        check_training_options(options)
    check_training_options({"seconds_per_batch": 400, "num_buckets": 150, "avoid_if_shorter_than": 2.0,
                            "avoid_if_longer_than": 60.0, "unrelated": "anything"})


def test_dynamic_batches_hold_at_most_the_given_seconds_and_cover_every_utterance():
    from speechbrain.dataio.dataset import DynamicItemDataset

    durations = [1.0 + 0.37 * (i % 11) for i in range(40)]
    data = DynamicItemDataset({f"u{i}": {"duration": d} for i, d in enumerate(durations)})
    kwargs = dynamic_batching(data, seconds_per_batch=10.0, num_buckets=4, num_workers=0)
    batches = list(kwargs["batch_sampler"])
    assert kwargs["num_workers"] == 0 and len(batches) > 1
    assert sorted(i for batch in batches for i in batch) == list(range(40))
    assert all(sum(durations[i] for i in batch) <= 10.0 for batch in batches)


def test_an_optimizer_step_limit_given_as_text_is_a_number():
    brain = MeanBrain(modules={"scale": torch.nn.Linear(1, 1)}, opt_class=lambda params: torch.optim.SGD(params),
                      run_opts={"device": "cpu", "optimizer_step_limit": "7"})
    assert brain.optimizer_step_limit == 7


class OrderBrain(MeanBrain):
    """Records the utterances of each training epoch."""

    def on_stage_start(self, stage, epoch=None):
        if stage.name == "TRAIN":
            self.epochs.append([])
        super().on_stage_start(stage, epoch)

    def compute_forward(self, batch, stage):
        if stage.name == "TRAIN":
            self.epochs[-1].append(tuple(batch.id))
        return super().compute_forward(batch, stage)


def many_utterances(folder, count=12):
    from speechbrain.dataio.dataset import DynamicItemDataset

    rows = {f"u{i}": {"duration": 0.5 + 0.1 * i, "sig": torch.full((800 + 100 * i,), 0.01 * (i + 1))}
            for i in range(count)}
    data = DynamicItemDataset(rows)
    data.set_output_keys(["id", "sig", "duration"])
    return data


def epoch_orders(data, epochs=3):
    brain = OrderBrain(modules={"scale": torch.nn.Linear(1, 1)},
                       opt_class=lambda params: torch.optim.SGD(params, lr=0.1), run_opts={"device": "cpu"})
    brain.seen, brain.epochs = [], []
    brain.fit(range(1, epochs + 1), data, train_loader_kwargs=dynamic_batching(data, 2.5, 2))
    return brain.epochs


def test_each_epoch_has_its_own_order_and_a_rerun_the_same(tmp_path):
    data = many_utterances(tmp_path)
    orders = epoch_orders(data)
    assert all(sorted(u for batch in order for u in batch) == sorted(data.data) for order in orders)
    assert orders[0] != orders[1] != orders[2] != orders[0]
    # A fresh sampler, as a rerun or a resumed run builds it, gives epoch 2 the order of epoch 2.
    from speechbrain.dataio.sampler import DynamicBatchSampler

    assert epoch_orders(data) == orders
    sampler = dynamic_batching(data, 2.5, 2)["batch_sampler"]
    assert isinstance(sampler, DynamicBatchSampler)
    sampler.set_epoch(2)
    assert [tuple(data.data_ids[i] for i in batch) for batch in sampler] == orders[1]


def test_a_resumed_data_loader_position_past_the_epoch_is_an_error(tmp_path):
    data = many_utterances(tmp_path)
    checkpointer = AtomicCheckpointer(tmp_path / "save", {})
    brain = MeanBrain(modules={"scale": torch.nn.Linear(1, 1)}, checkpointer=checkpointer,
                      opt_class=lambda params: torch.optim.SGD(params, lr=0.1), run_opts={"device": "cpu"})
    brain.seen = []
    loader = brain.make_dataloader(data, stage=__import__("speechbrain").Stage.TRAIN, batch_size=4)
    loader._speechbrain_recovery_skip_to = 9999  # what a checkpoint of another data set or batching holds
    with pytest.raises(ValueError, match="after batch 9999, but the epoch has 3 batches"):
        brain.fit(range(1, 2), loader)
    assert brain.seen == []


class NanBrain(MeanBrain):
    """The loss is NaN for the utterances listed in ``poisoned``."""

    def compute_objectives(self, predictions, batch, stage):
        loss = super().compute_objectives(predictions, batch, stage)
        return loss * float("nan") if set(batch.id) & self.poisoned else loss


def test_a_non_finite_loss_skips_its_batch_and_is_never_checkpointed(tmp_path, caplog):
    data = many_utterances(tmp_path, count=8)
    scale = torch.nn.Linear(1, 1)
    checkpointer = AtomicCheckpointer(tmp_path / "save", {"scale": scale})
    brain = NanBrain(modules={"scale": scale}, checkpointer=checkpointer,
                     opt_class=lambda params: torch.optim.SGD(params, lr=0.1),
                     run_opts={"device": "cpu", "ckpt_interval_steps": 1})
    brain.seen, brain.poisoned = [], {"u3"}
    with caplog.at_level(logging.WARNING):
        brain.fit(range(1, 3), data, train_loader_kwargs={"batch_size": 2})
    assert "the loss is not finite at optimizer step" in caplog.text and "utterances u2, u3" in caplog.text
    assert brain.optimizer_step == 6  # 2 epochs of 4 batches, one skipped in each
    assert all(torch.isfinite(p).all() for p in brain.modules.parameters())
    for checkpoint in checkpointer.list_checkpoints():
        assert torch.isfinite(torch.load(checkpoint.path / "scale.ckpt")["weight"]).all()

    brain = NanBrain(modules={"scale": scale}, opt_class=lambda params: torch.optim.SGD(params, lr=0.1),
                     run_opts={"device": "cpu"})
    brain.seen, brain.poisoned = [], {f"u{i}" for i in range(8)}  # every batch: patience (3) runs out
    with pytest.raises(ValueError, match=r"loss is not finite at optimizer step 1, batch 4 of epoch 3 .*patience"):
        brain.fit(range(3, 4), data, train_loader_kwargs={"batch_size": 2})


def test_random_state_is_plain_data_and_a_crafted_pickle_is_refused(tmp_path):
    import pickle

    checkpointer = AtomicCheckpointer(tmp_path, {"random_state": RandomState()})
    saved = checkpointer.save_checkpoint()
    restored = RandomState()
    restored.load(saved.path / "random_state.ckpt", end_of_epoch=True)  # weights_only=True reads it

    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (marker.touch, ())

    crafted = tmp_path / "random_state.ckpt"
    with open(crafted, "wb") as handle:
        pickle.dump({"torch": Payload()}, handle)
    with pytest.raises(pickle.UnpicklingError):
        RandomState().load(crafted, end_of_epoch=True)
    assert not marker.exists()


@pytest.mark.parametrize(("hparams", "run_opts", "message"), [
    ({"warmup_steps": 0}, None, "warmup_steps must be a positive integer, got 0"),
    ({"grad_accumulation_factor": 2}, {"grad_accumulation_factor": 0},
     "grad_accumulation_factor must be a positive integer, got 0"),
    ({"lr": "abc"}, None, "lr must be a positive number, got 'abc'"),
    ({"optimizer_step_limit": 205000}, {"optimizer_step_limit": "-5"},
     "optimizer_step_limit must be a positive integer, got '-5'"),
])
def test_bad_schedule_and_optimizer_options_are_refused_naming_them(hparams, run_opts, message):
    import speechbrain as sb

    with pytest.raises(ValueError, match=message):
        check_training_options(hparams, run_opts)
    if run_opts is not None:  # as SpeechBrain parses a command line
        _, parsed, _ = sb.parse_arguments(["h.yaml", *(f"--{k}={v}" for k, v in run_opts.items())])
        with pytest.raises(ValueError, match=message):
            check_training_options(hparams, parsed)
    check_training_options({"warmup_steps": 25000, "lr": 8e-4, "optimizer_step_limit": None},
                           {"optimizer_step_limit": "7"})


def test_a_second_run_in_the_same_folder_refuses_naming_the_first_a_stale_lock_is_taken_over(tmp_path, caplog):
    import subprocess
    import sys

    from speechbrain_ext.files import LOCK_FILE, lock_folder

    out = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from speechbrain_ext.files import lock_folder; "
         "lock_folder(sys.argv[1]); print('locked', flush=True); time.sleep(60)", str(out)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RuntimeError, match=rf"in use by another run \(PID {holder.pid} "):
            write_run_hyperparams(out, tmp_path / "missing.yaml", "")
    finally:
        holder.kill()
        holder.wait()
    assert (out / LOCK_FILE).is_file()  # killed: its lock stays, naming a process that no longer runs
    with caplog.at_level(logging.WARNING):
        assert lock_folder(out) == out.resolve() / LOCK_FILE
    assert "no longer runs" in caplog.text
    assert (out / LOCK_FILE).read_text().split()[0] == str(__import__("os").getpid())


def test_atomic_folder_keeps_the_previous_folder_until_the_new_one_is_whole(tmp_path):
    from speechbrain_ext.files import STAGING_PREFIX, atomic_folder

    target = tmp_path / "encoder"
    with atomic_folder(target) as staging:
        (staging / "a").write_text("1")
    with pytest.raises(KeyboardInterrupt), atomic_folder(target) as staging:
        (staging / "a").write_text("2")
        raise KeyboardInterrupt
    assert (target / "a").read_text() == "1" and not (tmp_path / (STAGING_PREFIX + "encoder")).exists()
    with atomic_folder(target) as staging:
        (staging / "b").write_text("3")
    assert sorted(p.name for p in target.iterdir()) == ["b"]
