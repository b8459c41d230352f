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
