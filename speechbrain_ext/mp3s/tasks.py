"""The MP3S tasks: data preparation, label pipelines, training and test metrics.

Each recipe under ``recipes/MP3S/<Task>/<head>/train.py`` calls :func:`run` with its task;
the head, sizes and optimisation live in the recipe's YAML.
"""

from __future__ import annotations

import csv
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import speechbrain as sb
from hyperpyyaml import load_hyperpyyaml
from speechbrain.dataio.encoder import CategoricalEncoder
from speechbrain.utils.distributed import run_on_main

from speechbrain_ext.bestrq.model import SpeechEncoder
from speechbrain_ext.data.dataset import audio_dataset
from speechbrain_ext.mp3s.brains import ClassificationBrain, CTCBrain, VerificationBrain, write_results
from speechbrain_ext.training import write_run_hyperparams

RESULTS_FILE = "results.json"


@dataclass
class Splits:
    """Datasets of a task: test sets by name; for verification, the trial utterances and trials."""

    train: object
    valid: object
    tests: dict = field(default_factory=dict)
    verification: object = None
    trials: list = field(default_factory=list)


def _datasets(hparams: dict, csvs: dict[str, Path], names: list[str], resample: bool = False) -> list:
    """Audio datasets of the prepared manifests ``names``, the training split first.

    Bad files are left out and listed; ``max_duration`` (if set) applies to the training split only.
    """
    return [
        audio_dataset(
            [csvs[name]],
            hparams["sample_rate"],
            hparams.get("min_duration", 0.0),
            hparams.get("max_duration") if position == 0 else None,
            report_file=Path(hparams["output_folder"]) / "skipped_audio.txt",
            header_cache=Path(hparams["output_folder"]) / "audio_headers.json",
            sort_by_duration=True,  # MP3S sorts ascending: less padding, shorter epochs first
            resample=resample,
        )
        for position, name in enumerate(names)
    ]


def _add_characters(hparams: dict, datasets: list, train) -> None:
    """Character targets for CTC (``wrd`` -> ``tokens``), the label encoder built from ``train``."""
    label_encoder = hparams["label_encoder"]

    @sb.utils.data_pipeline.takes("wrd")
    @sb.utils.data_pipeline.provides("wrd", "char_list", "tokens")
    def text_pipeline(wrd):
        yield wrd
        char_list = list(wrd)
        yield char_list
        yield label_encoder.encode_sequence_torch(char_list)

    sb.dataio.dataset.add_dynamic_item(datasets, text_pipeline)
    label_encoder.load_or_create(
        path=Path(hparams["save_folder"]) / "label_encoder.txt",
        from_didatasets=[train],
        output_key="char_list",
        special_labels={"blank_label": hparams["blank_index"], "unk_label": "<unk>"},
        sequence_input=True,
    )
    if len(label_encoder) > hparams["output_neurons"]:
        raise ValueError(
            f"the transcripts have {len(label_encoder)} symbols (with blank) but the head has "
            f"output_neurons={hparams['output_neurons']}: raise output_neurons in the YAML"
        )
    sb.dataio.dataset.set_output_keys(datasets, ["id", "sig", "wrd", "tokens"])


def _add_labels(hparams: dict, datasets: list, train, column: str) -> CategoricalEncoder:
    """Utterance labels from CSV ``column`` as ``label``, the encoder built from ``train``."""
    encoder = CategoricalEncoder()

    @sb.utils.data_pipeline.takes(column)
    @sb.utils.data_pipeline.provides("label")
    def label_pipeline(value):
        return encoder.encode_label_torch(value)

    sb.dataio.dataset.add_dynamic_item(datasets, label_pipeline)
    encoder.load_or_create(Path(hparams["save_folder"]) / "label_encoder.txt", from_didatasets=[train],
                           output_key=column)
    if len(encoder) != hparams["num_classes"]:
        raise ValueError(f"the training set has {len(encoder)} {column} classes, the YAML says "
                         f"num_classes={hparams['num_classes']}")
    sb.dataio.dataset.set_output_keys(datasets, ["id", "sig", "label"])
    return encoder


def prepare_librispeech_asr(hparams: dict) -> Splits:
    from speechbrain_ext.data.librispeech import prepare_librispeech

    names = hparams["train_splits"] + hparams["dev_splits"] + hparams["test_splits"]
    kwargs = {"data_folder": hparams["data_folder"], "save_folder": hparams["output_folder"], "splits": names}
    run_on_main(prepare_librispeech, kwargs={**kwargs, "skip_prep": hparams["skip_prep"]})
    csvs = prepare_librispeech(**kwargs, skip_prep=True)
    train, valid, *tests = _datasets(hparams, csvs, [hparams["train_splits"][0], hparams["dev_splits"][0],
                                                      *hparams["test_splits"]])
    _add_characters(hparams, [train, valid, *tests], train)
    return Splits(train, valid, dict(zip(hparams["test_splits"], tests)))


def prepare_commonvoice_asr(hparams: dict) -> Splits:
    from speechbrain_ext.data.commonvoice import prepare_commonvoice

    kwargs = {"data_folder": hparams["data_folder"], "save_folder": hparams["output_folder"]}
    run_on_main(prepare_commonvoice, kwargs={**kwargs, "skip_prep": hparams["skip_prep"]})
    csvs = prepare_commonvoice(**kwargs, skip_prep=True)
    train, valid, test = _datasets(hparams, csvs, ["train", "dev", "test"], resample=True)
    _add_characters(hparams, [train, valid, test], train)
    return Splits(train, valid, {"test": test})


def _prepare_classification(hparams: dict, prepare: Callable, kwargs: dict, names: list[str], column: str) -> Splits:
    kwargs = {"data_folder": hparams["data_folder"], "save_folder": hparams["output_folder"], **kwargs}
    run_on_main(prepare, kwargs={**kwargs, "skip_prep": hparams["skip_prep"]})
    csvs = prepare(**kwargs, skip_prep=True)
    train, valid, test = _datasets(hparams, csvs, names)
    _add_labels(hparams, [train, valid, test], train, column)
    return Splits(train, valid, {names[2]: test})


def prepare_iemocap_er(hparams: dict) -> Splits:
    from speechbrain_ext.data.iemocap import prepare_iemocap

    return _prepare_classification(hparams, prepare_iemocap, {"test_spk_id": hparams["test_spk_id"]},
                                   ["train", "valid", "test"], "emo")


def prepare_slurp_ic(hparams: dict) -> Splits:
    from speechbrain_ext.data.slurp import prepare_slurp

    return _prepare_classification(hparams, prepare_slurp, {}, ["train", "devel", "test"], "scenario")


def prepare_voxceleb_sv(hparams: dict) -> Splits:
    from speechbrain_ext.data.voxceleb import prepare_voxceleb1

    kwargs = {"data_folder": hparams["data_folder"], "save_folder": hparams["output_folder"]}
    run_on_main(prepare_voxceleb1, kwargs={**kwargs, "skip_prep": hparams["skip_prep"]})
    csvs = prepare_voxceleb1(**kwargs, skip_prep=True)
    train, valid, test = _datasets(hparams, csvs, ["train", "valid", "test"])
    _add_labels(hparams, [train, valid], train, "spk_id")
    sb.dataio.dataset.set_output_keys([test], ["id", "sig"])
    kept = {test[i]["id"] for i in range(len(test))}  # trials of skipped audio cannot be scored
    with open(csvs["trials"], newline="", encoding="utf-8") as handle:
        trials = [(int(row["label"]), row["enrol"], row["test"]) for row in csv.DictReader(handle)
                  if row["enrol"] in kept and row["test"] in kept]
    return Splits(train, valid, {}, verification=test, trials=trials)


@dataclass(frozen=True)
class Task:
    name: str
    prepare: Callable[[dict], Splits]
    brain: type
    metrics: tuple[str, ...]  # test metrics reported, the first one the headline


TASKS = {
    "LibriSpeech": Task("LibriSpeech ASR", prepare_librispeech_asr, CTCBrain, ("WER", "CER")),
    "CommonVoice": Task("CommonVoice ASR", prepare_commonvoice_asr, CTCBrain, ("WER", "CER")),
    "VoxCeleb1": Task("VoxCeleb1 SV", prepare_voxceleb_sv, VerificationBrain, ("EER",)),
    "IEMOCAP": Task("IEMOCAP ER", prepare_iemocap_er, ClassificationBrain, ("accuracy",)),
    "SLURP": Task("SLURP IC", prepare_slurp_ic, ClassificationBrain, ("accuracy",)),
}


def run(task_key: str, argv: list[str]) -> list[dict]:
    """Trains and tests one head on one task for the encoder given by ``ssl_folder``.

    Writes ``<output_folder>/results.json``: one row per test metric with the task, head,
    metric, value, epochs, encoder folder and mixer.
    """
    task = TASKS[task_key]
    hparams_file, run_opts, overrides = sb.parse_arguments(argv)
    sb.utils.distributed.ddp_init_group(run_opts)
    with open(hparams_file, encoding="utf-8") as fin:
        hparams = load_hyperpyyaml(fin, overrides)
    write_run_hyperparams(hparams["output_folder"], hparams_file, overrides)
    splits = task.prepare(hparams)

    brain = task.brain(modules=hparams["modules"], hparams=hparams, run_opts=run_opts,
                       checkpointer=hparams["checkpointer"])
    brain.fit(hparams["epoch_counter"], splits.train, splits.valid,
              train_loader_kwargs=hparams["train_dataloader_opts"],
              valid_loader_kwargs=hparams["valid_dataloader_opts"])
    epochs_trained = hparams["epoch_counter"].current  # testing reloads the best checkpoint and its counter

    error_key = task.brain.error_key
    values: dict[str, dict[str, float]] = {}
    for name, dataset in splits.tests.items():
        brain.evaluate(dataset, min_key=error_key, test_loader_kwargs=hparams["test_dataloader_opts"])
        values[name] = {metric: brain.test_stats[metric] for metric in task.metrics}
    if splits.trials:
        # Speaker accuracy on held-out utterances of the training speakers, then verification.
        brain.evaluate(splits.valid, min_key=error_key, test_loader_kwargs=hparams["test_dataloader_opts"])
        values["valid"] = {"accuracy": brain.test_stats["accuracy"]}
        eer = brain.verify(splits.verification, splits.trials, hparams["test_dataloader_opts"])
        values["veri_test2"] = {"EER": eer}
        hparams["train_logger"].log_stats({"verification trials": len(splits.trials)}, test_stats={"EER": eer})

    config = SpeechEncoder.read_config(hparams["ssl_folder"])
    rows = [
        {"task": task.name, "head": hparams["head_name"], "test_set": test_set, "metric": metric,
         "value": value, "epochs": epochs_trained, "encoder": str(hparams["ssl_folder"]),
         "mixer": config["mixer"]}
        for test_set, metrics in values.items() for metric, value in metrics.items()
    ]
    if sb.utils.distributed.if_main_process():
        write_results(Path(hparams["output_folder"]) / RESULTS_FILE, rows)
    return rows


def main(task_key: str) -> None:
    run(task_key, sys.argv[1:])
