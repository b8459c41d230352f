"""What the five MP3S recipes share: the downstream Brain and the record a run folder keeps.

:class:`DownstreamBrain` trains a head on the learned weighted sum of a frozen encoder's layers with the
optimisation of the MP3S benchmark (Zaiem et al. 2023, https://arxiv.org/abs/2306.00452): Adam for the head,
a separate Adam for the layer weights, each rate annealed after validation, the checkpoint of the best
validation error tested. Each recipe's ``train.py`` subclasses it with its task's ``compute_forward``,
``compute_objectives`` and ``on_stage_end``.

A run folder records what it trains on (``run_identity.json``: task, head, profile, a digest of the encoder's
files, fold, and a digest of the data's manifests), so that a rerun into it on another encoder, fold or corpus is
refused instead of reporting the old head; at the end it holds the test results (``results.json``) and the
learned weight of each layer (``layer_weights.json``), which :mod:`speechbrain_ext.mp3s.suite` collects.

Each head has two profiles: ``hparams/<head>.yaml`` is ``paper`` (what the paper's authors ran: their fork of
the benchmark, whettenr/benchmarks ``hparams/ssl_brq.yaml``) and ``hparams/mp3s/<head>.yaml`` is ``mp3s``
(upstream speechbrain/benchmarks); the YAML's ``profile`` goes into every result row.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import speechbrain as sb
import yaml
from hyperpyyaml import load_hyperpyyaml
from hyperpyyaml.core import resolve_references
from speechbrain.nnet.schedulers import update_learning_rate
from speechbrain.utils.distributed import if_main_process, run_on_main
from speechbrain.utils.logger import get_logger
from torch import nn

from speechbrain_ext.data.dataset import audio_dataset
from speechbrain_ext.files import atomic_writer
from speechbrain_ext.models.speech_encoder import SpeechEncoder
from speechbrain_ext.training import ResilientBrain, check_training_options, write_run_hyperparams

logger = get_logger(__name__)

RESULTS_FILE = "results.json"
LAYER_WEIGHTS_FILE = "layer_weights.json"
IDENTITY_FILE = "run_identity.json"
SKIPPED_AUDIO_FILE = "skipped_audio.txt"
PROFILES = ("paper", "mp3s")


def encoder_digest(folder: str | Path) -> str:
    """SHA-256 of every file of an exported encoder folder (its weights and configuration), by name."""
    digest = hashlib.sha256()
    for path in sorted(p for p in Path(folder).iterdir() if p.is_file()):
        digest.update(path.name.encode() + b"\0")
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def manifests_digest(csv_files: list[str | Path]) -> str:
    """SHA-256 of the rows of SpeechBrain CSV manifests, their ``wav`` paths left out.

    What a head learns from: the utterances' IDs, durations and labels. The audio paths are left out, so a
    corpus moved to another disk is the same data.
    """
    digest = hashlib.sha256()
    for csv_file in csv_files:
        with open(csv_file, newline="", encoding="utf-8") as handle:
            for row in csv.DictReader(handle):
                digest.update(json.dumps({k: v for k, v in row.items() if k != "wav"}, sort_keys=True).encode())
        digest.update(b"\0")
    return digest.hexdigest()


def check_run_identity(output_folder: str | Path, identity: dict) -> None:
    """Records what a run folder trains on; refuses a folder that holds a run on something else.

    A head in ``output_folder`` is resumed (or reported) only by a run of the same task, head, profile,
    encoder weights, fold and data: anything else would report a head trained for something else (another
    encoder's features, another corpus, or a training set that held this fold's test speaker). The keys of
    ``identity`` are compared with those recorded; keys not recorded yet (the data digest, known once the
    manifests are written) are added.
    """
    path = Path(output_folder) / IDENTITY_FILE
    recorded = json.loads(path.read_text()) if path.is_file() else {}
    differ = [key for key in identity if key != "encoder" and key in recorded and recorded[key] != identity[key]]
    if differ:
        details = "; ".join(f"{key}: {recorded.get(key)!r} there, {identity.get(key)!r} now" for key in differ)
        raise ValueError(
            f"{output_folder} holds a run trained on something else ({details}; encoder "
            f"{recorded.get('encoder')}). Its head would be reused as this run's result: give another "
            f"--output_folder, or delete that folder to train afresh"
        )
    if if_main_process() and any(key not in recorded for key in identity):
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_writer(path) as out:
            out.write(json.dumps({**recorded, **identity}, indent=2) + "\n")


def plain_settings(text: str) -> dict:
    """The top-level settings of a YAML text whose values are plain (numbers, text); tagged values are None.

    Example
    -------
    >>> plain_settings("lr: 0.01\\nhead: !new:torch.nn.Identity\\nnumber_of_epochs: 3\\n")
    {'lr': 0.01, 'head': None, 'number_of_epochs': 3}
    """

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_multi_constructor("!", lambda loader, suffix, node: None)
    return yaml.load(text, Loader=Loader) or {}


def start_run(argv: list[str]) -> tuple[dict, dict]:
    """SpeechBrain's start of a recipe, for an MP3S run folder; returns ``hparams`` and ``run_opts``.

    Parses the command line (``hparams.yaml --key=value ...``), joins the DDP group, loads the YAML with
    the overrides (once), checks the training options (a positive ``number_of_epochs`` and ``lr``: an
    untrained head is never reported), refuses an ``output_folder`` that holds a run on another encoder, fold
    or profile (:func:`check_run_identity`) and writes the run's ``hyperparams.yaml`` there.
    """
    hparams_file, run_opts, overrides = sb.parse_arguments(argv)
    sb.utils.distributed.ddp_init_group(run_opts)
    # Checked on the YAML's text: loading it builds its objects, and some prepare the data (num_classes).
    with open(hparams_file, encoding="utf-8") as fin:
        settings = plain_settings(resolve_references(fin, overrides).getvalue())
    check_training_options({key: settings[key] for key in ("number_of_epochs", "lr", "lr_weights") if key in settings},
                           run_opts)
    with open(hparams_file, encoding="utf-8") as fin:
        hparams = load_hyperpyyaml(fin, overrides)
    if hparams.get("profile") not in PROFILES:
        raise ValueError(f"{hparams_file}: profile must be one of {PROFILES}, got {hparams.get('profile')!r}")
    identity = {"task": hparams["task"], "head": hparams["head_name"], "profile": hparams["profile"],
                "encoder_digest": encoder_digest(hparams["ssl_folder"]), "fold": hparams.get("test_spk_id"),
                "encoder": str(Path(hparams["ssl_folder"]).resolve())}
    check_run_identity(hparams["output_folder"], identity)
    write_run_hyperparams(hparams["output_folder"], hparams_file, overrides)
    return hparams, run_opts


def count_classes(prepare: Callable[[], dict], column: str, mp3s_count: int | None = None) -> int:
    """Number of distinct ``column`` labels in the training manifest that ``prepare`` writes (and returns).

    For a YAML's ``num_classes`` (``!apply``): ``prepare`` (a corpus's ``prepare_<corpus>`` with its
    arguments) runs on the main process first, so the head is sized by the training data and a partial
    corpus works. The MP3S standard count (``mp3s_count``: 1211 VoxCeleb1 speakers, 18 SLURP scenarios) is
    logged beside it, with a warning when they differ.
    """
    manifests = run_on_main(prepare)
    with open(manifests["train"], newline="", encoding="utf-8") as handle:
        count = len({row[column] for row in csv.DictReader(handle)})
    if mp3s_count is not None and count != mp3s_count:
        logger.warning("the training data has %d %s classes, the MP3S standard corpus %d: the head is sized for "
                       "%d (a partial or different corpus?)", count, column, mp3s_count, count)
    else:
        logger.info("%d %s classes in the training data", count, column)
    return count


def load_classes(hparams: dict, train_set, column: str):
    """The YAML's ``label_encoder`` (a ``CategoricalEncoder``) with the ``column`` labels of ``train_set``.

    The classes are numbered once, from the training set, into ``<save_folder>/label_encoder.txt`` (a rerun
    reads them there); there must be ``num_classes`` of them, the head's size.
    """
    label_encoder = hparams["label_encoder"]
    label_encoder.load_or_create(Path(hparams["save_folder"]) / "label_encoder.txt", from_didatasets=[train_set],
                                 output_key=column)
    if len(label_encoder) != hparams["num_classes"]:
        raise ValueError(f"the training set has {len(label_encoder)} {column} classes, but num_classes="
                         f"{hparams['num_classes']}: leave num_classes out to take the count from the data")
    label_encoder.expect_len(hparams["num_classes"])
    return label_encoder


def audio_datasets(hparams: dict, csv_files: list, resample: bool = False) -> list:
    """Datasets giving ``id`` and ``sig`` of the manifests ``csv_files``, the training manifest first.

    The manifests' digest joins the run's identity (a rerun on other data is refused). Bad audio is left out
    (counted in the log, listed in ``<output_folder>/skipped_audio.txt``); audio
    that fails to decode in training is left out of its batch and of later runs. ``max_duration`` (if
    set) applies to the training split only. The training split is ordered by ``sorting`` ("ascending":
    by duration, then the loader must not shuffle, as MP3S's ASR recipes; "random": the manifest's order,
    for a shuffling loader); the others ascend. ``resample`` reads audio of any rate (Common Voice's
    48 kHz MP3).
    """
    sorting = hparams["sorting"]
    if sorting not in ("ascending", "random"):
        raise ValueError(f"sorting must be 'ascending' or 'random', got {sorting!r}")
    folder = Path(hparams["output_folder"])
    check_run_identity(folder, {"data_digest": manifests_digest(csv_files)})
    return [
        audio_dataset(
            [csv_file], hparams["sample_rate"], hparams.get("min_duration", 0.0),
            hparams.get("max_duration") if position == 0 else None,
            report_file=folder / SKIPPED_AUDIO_FILE, header_cache=folder / "audio_headers.json",
            sort_by_duration=position > 0 or sorting == "ascending", resample=resample,
            check_decoding=hparams.get("check_decoding", False),
        )
        for position, csv_file in enumerate(csv_files)
    ]


class DownstreamBrain(ResilientBrain):
    """A head trained on the weighted layers of a frozen encoder, with MP3S's optimisation.

    modules: ``ssl`` (a :class:`~speechbrain_ext.mp3s.frozen_encoder.WeightedEncoderFeatures`) and
    ``head``. hparams: ``model_opt_class`` and ``weights_opt_class`` (the optimizers of the head and of
    the layer weights), ``lr_annealing_model`` and ``lr_annealing_weights`` (None: a constant rate),
    ``anneal_on`` (what the schedulers step on: "loss", "error" or "epoch"), ``train_logger``,
    ``epoch_counter``, the data loader options, and ``task``, ``head_name``, ``ssl_folder`` for the results.

    A subclass sets ``error_key`` (the validation error that anneals the rates and chooses the tested
    checkpoint) and ``metrics`` (the test metrics reported, headline first), and ends its
    ``on_stage_end`` with :meth:`finish_stage`.

    A training batch of one utterance (an epoch's last, or one whose other audio failed to decode) is skipped
    with a warning when the head has batch normalisation, which cannot train on one example (the x-vector and
    ECAPA-TDNN heads).
    """

    error_key = "error_rate"
    metrics: tuple[str, ...] = ("accuracy",)

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.head_has_batch_norm = any(isinstance(module, nn.modules.batchnorm._BatchNorm)
                                       for module in self.modules.head.modules())
        if self.checkpointer is not None:
            # The frozen encoder is not checkpointed, only what trains.
            self.checkpointer.add_recoverable("layer_weights", self.modules.ssl.weighted)

    def init_optimizers(self):
        self.model_optimizer = self.hparams.model_opt_class(self.modules.head.parameters())
        self.weights_optimizer = self.hparams.weights_opt_class(self.modules.ssl.weighted.parameters())
        self.optimizers_dict = {"model_optimizer": self.model_optimizer, "weights_optimizer": self.weights_optimizer}
        if self.checkpointer is not None:
            self.checkpointer.add_recoverable("model_optimizer", self.model_optimizer)
            self.checkpointer.add_recoverable("weights_optimizer", self.weights_optimizer)

    def fit_batch(self, batch):
        if batch is not None and self.head_has_batch_norm and len(batch.id) < 2:
            logger.warning("training batch of one utterance (%s) skipped: the head's batch normalisation needs two",
                           batch.id[0])
            batch = None  # skipped as a batch whose audio failed to decode (the processes stay in step)
        return super().fit_batch(batch)

    def features(self, batch):
        """The weighted layers of the batch's audio (B, T, E) and their relative lengths (B,)."""
        wavs, wav_lens = batch.sig
        return self.modules.ssl(wavs.to(self.device), wav_lens.to(self.device))

    def _anneal(self, scheduler, optimizer, stats: dict, epoch: int) -> float:
        """Steps ``scheduler`` (None: a constant rate) after validation; returns the rate it used."""
        current = optimizer.param_groups[0]["lr"]
        if scheduler is None:
            return current
        anneal_on = self.hparams.anneal_on
        if anneal_on not in ("loss", "error", "epoch"):
            raise ValueError(f"anneal_on must be 'loss', 'error' or 'epoch', got {anneal_on!r}")
        value = {"loss": stats["loss"], "error": stats[self.error_key], "epoch": epoch}[anneal_on]
        old, new = scheduler(value)
        update_learning_rate(optimizer, new)
        return old

    def finish_stage(self, stage, stats: dict, epoch=None) -> None:
        """The end of a stage, given its ``stats`` (the loss and, outside training, the metrics).

        Training: kept for the log. Validation: both rates annealed, the epoch logged, a checkpoint saved
        (the best by ``error_key`` kept). Test: logged with the epoch of the checkpoint tested, and kept as
        ``test_stats``.
        """
        if stage == sb.Stage.TRAIN:
            self.train_stats = stats
        elif stage == sb.Stage.VALID:
            lr_model = self._anneal(self.hparams.lr_annealing_model, self.model_optimizer, stats, epoch)
            lr_weights = self._anneal(self.hparams.lr_annealing_weights, self.weights_optimizer, stats, epoch)
            self.hparams.train_logger.log_stats({"epoch": epoch, "lr_model": lr_model, "lr_weights": lr_weights},
                                                train_stats=self.train_stats, valid_stats=stats)
            self.checkpointer.save_and_keep_only(meta={self.error_key: stats[self.error_key]},
                                                 min_keys=[self.error_key])
        else:
            self.test_stats = stats
            self.hparams.train_logger.log_stats({"Epoch loaded": self.hparams.epoch_counter.current},
                                                test_stats=stats)

    def fit_and_test(self, train_set, valid_set, test_sets: dict) -> dict[str, dict[str, float]]:
        """Trains (resuming from the last checkpoint), then tests the best validation checkpoint.

        Returns ``{test set: {metric: value}}`` for ``metrics``; ``epochs_trained`` keeps how many epochs
        the head was trained (testing reloads the best checkpoint and its epoch counter).
        """
        self.train_head(train_set, valid_set)
        return self.test_best(test_sets)

    def train_head(self, train_set, valid_set) -> None:
        """Trains for the YAML's epochs, resuming from the last checkpoint; the last epoch's weights stay loaded."""
        self.fit(self.hparams.epoch_counter, train_set, valid_set,
                 train_loader_kwargs=self.hparams.train_dataloader_opts,
                 valid_loader_kwargs=self.hparams.valid_dataloader_opts)
        self.epochs_trained = self.hparams.epoch_counter.current

    def test_best(self, test_sets: dict) -> dict[str, dict[str, float]]:
        """Tests the best validation checkpoint on each test set: ``{test set: {metric: value}}``."""
        values = {}
        for name, dataset in test_sets.items():
            self.test_set_name = name  # for the files a subclass writes at the end of a test
            self.evaluate(dataset, min_key=self.error_key, test_loader_kwargs=self.hparams.test_dataloader_opts)
            values[name] = {metric: self.test_stats[metric] for metric in self.metrics}
        return values

    def write_results(self, values: dict[str, dict[str, float]]) -> list[dict]:
        """Writes ``results.json`` (one row per test set and metric) and ``layer_weights.json``; returns the rows.

        A row holds the task, head, profile, test set, metric, value, epochs trained, encoder folder, mixer and
        fold.
        """
        hparams = self.hparams
        mixer = SpeechEncoder.read_config(hparams.ssl_folder)["mixer"]
        fold = getattr(hparams, "test_spk_id", None)
        run = {"task": hparams.task, "head": hparams.head_name, "profile": hparams.profile}
        rows = [{**run, "test_set": test_set, "metric": metric, "value": value, "epochs": self.epochs_trained,
                 "encoder": str(hparams.ssl_folder), "mixer": mixer, "fold": fold}
                for test_set, metrics in values.items() for metric, value in metrics.items()]
        if if_main_process():
            output = Path(hparams.output_folder)
            with atomic_writer(output / RESULTS_FILE) as out:
                out.write(json.dumps(rows, indent=2) + "\n")
            weights = {**run, "encoder": str(hparams.ssl_folder), "mixer": mixer, "fold": fold,
                       "layer_weights": self.modules.ssl.weighted.layer_weights()}
            with atomic_writer(output / LAYER_WEIGHTS_FILE) as out:
                out.write(json.dumps(weights, indent=2) + "\n")
            logger.info("results written to %s", output / RESULTS_FILE)
        return rows
