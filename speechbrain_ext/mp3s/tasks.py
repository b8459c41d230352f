"""The MP3S tasks: data preparation, label pipelines, training and test metrics.

Each recipe under ``recipes/MP3S/<Task>/<head>/train.py`` calls :func:`run` with its task;
the head, sizes and optimisation live in the recipe's YAML.
"""

from __future__ import annotations

import csv
import hashlib
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import speechbrain as sb
import torch
from hyperpyyaml import load_hyperpyyaml
from speechbrain.dataio.encoder import CategoricalEncoder
from speechbrain.utils.distributed import run_on_main
from speechbrain.utils.logger import get_logger

from speechbrain_ext.data.dataset import audio_dataset
from speechbrain_ext.models.speech_encoder import SpeechEncoder
from speechbrain_ext.mp3s.brains import ClassificationBrain, CTCBrain, VerificationBrain, write_results
from speechbrain_ext.mp3s.text import CharacterUnits, SentencePieceUnits, train_sentencepiece
from speechbrain_ext.training import write_run_hyperparams

logger = get_logger(__name__)

RESULTS_FILE = "results.json"
LAYER_WEIGHTS_FILE = "layer_weights.json"
IDENTITY_FILE = "run_identity.json"


@dataclass
class Splits:
    """Datasets of a task: test sets by name; for verification, the trial utterances and trials."""

    train: object
    valid: object
    tests: dict = field(default_factory=dict)
    verification: object = None
    trials: list = field(default_factory=list)
    units: object = None  # ASR output units (characters or BPE)


def _datasets(hparams: dict, csvs: dict[str, Path], names: list[str], resample: bool = False) -> list:
    """Audio datasets of the prepared manifests ``names``, the training split first.

    Bad files are left out and listed; ``max_duration`` (if set) applies to the training split only.
    The training split is ordered by ``sorting`` (MP3S: "ascending" for ASR, then the loader must
    not shuffle; "random" keeps the manifest order for a shuffling loader); the others ascend.
    """
    sorting = hparams.get("sorting", "ascending")
    if sorting not in ("ascending", "random"):
        raise ValueError(f"sorting must be 'ascending' or 'random', got {sorting!r}")
    return [
        audio_dataset(
            [csvs[name]],
            hparams["sample_rate"],
            hparams.get("min_duration", 0.0),
            hparams.get("max_duration") if position == 0 else None,
            report_file=Path(hparams["output_folder"]) / "skipped_audio.txt",
            header_cache=Path(hparams["output_folder"]) / "audio_headers.json",
            sort_by_duration=position > 0 or sorting == "ascending",
            resample=resample,
            check_decoding=hparams.get("check_decoding", False),
        )
        for position, name in enumerate(names)
    ]


def _add_text_targets(hparams: dict, datasets: list, train, train_csv: Path):
    """CTC targets ``tokens`` from ``wrd``: characters, or SentencePiece units (``token_type: bpe``)."""
    token_type = hparams.get("token_type", "char")
    if token_type == "char":
        return _add_characters(hparams, datasets, train)
    if token_type not in ("bpe", "unigram"):
        raise ValueError(f"token_type must be 'char', 'bpe' or 'unigram', got {token_type!r}")
    tokenizer = train_sentencepiece(hparams["save_folder"], train_csv, hparams["output_neurons"], token_type,
                                    hparams.get("character_coverage", 1.0))

    @sb.utils.data_pipeline.takes("wrd")
    @sb.utils.data_pipeline.provides("wrd", "tokens")
    def text_pipeline(wrd):
        yield wrd
        yield torch.LongTensor(tokenizer.sp.encode_as_ids(wrd))

    sb.dataio.dataset.add_dynamic_item(datasets, text_pipeline)
    sb.dataio.dataset.set_output_keys(datasets, ["id", "sig", "wrd", "tokens"])
    return SentencePieceUnits(tokenizer)


def _add_characters(hparams: dict, datasets: list, train) -> CharacterUnits:
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
    return CharacterUnits(label_encoder, hparams["output_neurons"])


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
        raise ValueError(f"the training set has {len(encoder)} {column} classes, but num_classes="
                         f"{hparams['num_classes']}: leave num_classes out to take the count from the data")
    sb.dataio.dataset.set_output_keys(datasets, ["id", "sig", "label"])
    return encoder


# Manifests of each corpus (preparation run or skipped), then the datasets built from them.

def _prepared(prepare: Callable, hparams: dict, **kwargs) -> dict[str, Path]:
    """Runs ``prepare`` on the main process (unless ``skip_prep``), then every process reads its manifests."""
    run_on_main(prepare, kwargs={**kwargs, "skip_prep": hparams["skip_prep"]})
    return prepare(**kwargs, skip_prep=True)


def librispeech_csvs(hparams: dict) -> dict[str, Path]:
    from speechbrain_ext.data.librispeech import prepare_librispeech

    names = hparams["train_splits"] + hparams["dev_splits"] + hparams["test_splits"]
    kwargs = {"data_folder": hparams["data_folder"], "save_folder": hparams["output_folder"], "splits": names}
    return _prepared(prepare_librispeech, hparams, **kwargs)


def commonvoice_csvs(hparams: dict) -> dict[str, Path]:
    from speechbrain_ext.data.commonvoice import prepare_commonvoice

    kwargs = {"data_folder": hparams["data_folder"], "save_folder": hparams["output_folder"]}
    return _prepared(prepare_commonvoice, hparams, **kwargs)


def iemocap_csvs(hparams: dict) -> dict[str, Path]:
    from speechbrain_ext.data.iemocap import prepare_iemocap

    kwargs = {"data_folder": hparams["data_folder"], "save_folder": hparams["output_folder"],
              "test_spk_id": hparams["test_spk_id"]}
    return _prepared(prepare_iemocap, hparams, **kwargs)


def slurp_csvs(hparams: dict) -> dict[str, Path]:
    from speechbrain_ext.data.slurp import prepare_slurp

    kwargs = {"data_folder": hparams["data_folder"], "save_folder": hparams["output_folder"]}
    return _prepared(prepare_slurp, hparams, **kwargs)


def voxceleb_csvs(hparams: dict) -> dict[str, Path]:
    from speechbrain_ext.data.voxceleb import prepare_voxceleb1

    kwargs = {"data_folder": hparams["data_folder"], "save_folder": hparams["output_folder"],
              "valid_ratio": hparams.get("valid_ratio", 0.1)}
    return _prepared(prepare_voxceleb1, hparams, **kwargs)


def prepare_librispeech_asr(hparams: dict) -> Splits:
    csvs = librispeech_csvs(hparams)
    train_name = hparams["train_splits"][0]
    train, valid, *tests = _datasets(hparams, csvs, [train_name, hparams["dev_splits"][0], *hparams["test_splits"]])
    units = _add_text_targets(hparams, [train, valid, *tests], train, csvs[train_name])
    return Splits(train, valid, dict(zip(hparams["test_splits"], tests)), units=units)


def prepare_commonvoice_asr(hparams: dict) -> Splits:
    csvs = commonvoice_csvs(hparams)
    train, valid, test = _datasets(hparams, csvs, ["train", "dev", "test"], resample=True)
    units = _add_text_targets(hparams, [train, valid, test], train, csvs["train"])
    return Splits(train, valid, {"test": test}, units=units)


def _prepare_classification(hparams: dict, csvs: dict, names: list[str], column: str) -> Splits:
    train, valid, test = _datasets(hparams, csvs, names)
    _add_labels(hparams, [train, valid, test], train, column)
    return Splits(train, valid, {names[2]: test})


def prepare_iemocap_er(hparams: dict) -> Splits:
    return _prepare_classification(hparams, iemocap_csvs(hparams), ["train", "valid", "test"], "emo")


def prepare_slurp_ic(hparams: dict) -> Splits:
    return _prepare_classification(hparams, slurp_csvs(hparams), ["train", "devel", "test"], "scenario")


def prepare_voxceleb_sv(hparams: dict) -> Splits:
    csvs = voxceleb_csvs(hparams)
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
    csvs: Callable[[dict], dict] | None = None  # classification: the manifests, to count the classes
    label_column: str | None = None  # classification: the label column of the training manifest


TASKS = {
    "LibriSpeech": Task("LibriSpeech ASR", prepare_librispeech_asr, CTCBrain, ("WER", "CER")),
    "CommonVoice": Task("CommonVoice ASR", prepare_commonvoice_asr, CTCBrain, ("WER", "CER")),
    "VoxCeleb1": Task("VoxCeleb1 SV", prepare_voxceleb_sv, VerificationBrain, ("EER",), voxceleb_csvs, "spk_id"),
    "IEMOCAP": Task("IEMOCAP ER", prepare_iemocap_er, ClassificationBrain, ("accuracy",), iemocap_csvs, "emo"),
    "SLURP": Task("SLURP IC", prepare_slurp_ic, ClassificationBrain, ("accuracy",), slurp_csvs, "scenario"),
}


def encoder_digest(folder: str | Path) -> str:
    """SHA-256 of every file of an exported encoder folder (its weights and configuration), by name."""
    digest = hashlib.sha256()
    for path in sorted(p for p in Path(folder).iterdir() if p.is_file()):
        digest.update(path.name.encode() + b"\0")
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def check_run_identity(output_folder: str | Path, identity: dict) -> None:
    """Records what a run folder trains on; refuses a folder that holds a run on another encoder or fold.

    A head in ``output_folder`` is resumed (or reported) only by a run of the same task, head,
    encoder weights and fold: anything else would report a head trained for something else
    (another encoder's features, or a training set that held this fold's test speaker).
    """
    path = Path(output_folder) / IDENTITY_FILE
    keys = ("task", "head", "encoder_digest", "fold")
    if path.is_file():
        recorded = json.loads(path.read_text())
        differ = [key for key in keys if recorded.get(key) != identity.get(key)]
        if differ:
            details = "; ".join(f"{key}: {recorded.get(key)!r} there, {identity.get(key)!r} now" for key in differ)
            raise ValueError(
                f"{output_folder} holds a run trained on something else ({details}; encoder "
                f"{recorded.get('encoder')}). Its head would be reused as this run's result: give another "
                f"--output_folder, or delete that folder to train afresh"
            )
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(identity, indent=2) + "\n")


def _light_hparams(hparams_file: str, overrides: str) -> dict:
    """The YAML's plain values (references resolved, no object built): enough to prepare the data."""
    from hyperpyyaml import resolve_references
    from ruamel.yaml import YAML

    with open(hparams_file, encoding="utf-8") as fin:
        text = resolve_references(fin, overrides).getvalue()
    loaded = YAML(typ="rt").load(text)
    plain = (str, int, float, bool, list, type(None))
    return {str(key): (list(value) if isinstance(value, list) else value)
            for key, value in loaded.items() if isinstance(value, plain)}


def count_classes(task: Task, hparams: dict) -> int:
    """Number of distinct labels in the task's training manifest (the data is prepared if needed).

    The MP3S standard count (``mp3s_num_classes``, e.g. 1211 VoxCeleb1 speakers, 18 SLURP
    scenarios) is logged beside it, with a warning when they differ (a partial corpus).
    """
    csvs = task.csvs(hparams)
    with open(csvs["train"], newline="", encoding="utf-8") as handle:
        count = len({row[task.label_column] for row in csv.DictReader(handle)})
    standard = hparams.get("mp3s_num_classes")
    if standard is not None and count != standard:
        logger.warning("%s: the training data has %d %s classes, the MP3S standard corpus %d: the head is "
                       "sized for %d (a partial or different corpus?)", task.name, count, task.label_column,
                       standard, count)
    else:
        logger.info("%s: %d %s classes in the training data", task.name, count, task.label_column)
    return count


def run(task_key: str, argv: list[str]) -> list[dict]:
    """Trains and tests one head on one task for the encoder given by ``ssl_folder``.

    Writes into ``<output_folder>``: ``run_identity.json`` (task, head, encoder digest, fold:
    a later run with another encoder or fold refuses the folder), ``results.json`` (one row per
    test metric with the task, head, metric, value, epochs, encoder folder, mixer and fold) and
    ``layer_weights.json`` (the learned weight of each encoder layer).
    """
    task = TASKS[task_key]
    hparams_file, run_opts, overrides = sb.parse_arguments(argv)
    sb.utils.distributed.ddp_init_group(run_opts)
    light = _light_hparams(hparams_file, overrides)
    identity = {"task": task.name, "head": light.get("head_name"),
                "encoder_digest": encoder_digest(light["ssl_folder"]),
                "fold": light.get("test_spk_id"), "encoder": str(Path(light["ssl_folder"]).resolve())}
    check_run_identity(light["output_folder"], identity)
    if task.label_column is not None and light.get("num_classes") is None:
        overrides = (overrides or "") + f"\nnum_classes: {count_classes(task, light)}\n"
    with open(hparams_file, encoding="utf-8") as fin:
        hparams = load_hyperpyyaml(fin, overrides)
    write_run_hyperparams(hparams["output_folder"], hparams_file, overrides)
    splits = task.prepare(hparams)

    brain = task.brain(modules=hparams["modules"], hparams=hparams, run_opts=run_opts,
                       checkpointer=hparams["checkpointer"])
    if splits.units is not None:
        brain.units = splits.units
        hparams["train_logger"].log_stats({"output units": f"{splits.units.kind}, {len(splits.units.vocabulary)}"})
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
    fold = hparams.get("test_spk_id")
    rows = [
        {"task": task.name, "head": hparams["head_name"], "test_set": test_set, "metric": metric,
         "value": value, "epochs": epochs_trained, "encoder": str(hparams["ssl_folder"]),
         "mixer": config["mixer"], "fold": fold}
        for test_set, metrics in values.items() for metric, value in metrics.items()
    ]
    if sb.utils.distributed.if_main_process():
        output = Path(hparams["output_folder"])
        write_results(output / RESULTS_FILE, rows)
        weights = {"task": task.name, "head": hparams["head_name"], "encoder": str(hparams["ssl_folder"]),
                   "mixer": config["mixer"], "fold": fold,
                   "layer_weights": brain.modules.ssl.weighted.layer_weights()}
        (output / LAYER_WEIGHTS_FILE).write_text(json.dumps(weights, indent=2) + "\n")
    return rows


def main(task_key: str) -> None:
    run(task_key, sys.argv[1:])
