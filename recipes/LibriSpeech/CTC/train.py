#!/usr/bin/env python3
"""Recipe for fine-tuning a BEST-RQ-pretrained mixer Conformer with CTC on LibriSpeech characters.

Whetten et al. (2024), *An Analysis of Linear Complexity Attention Substitutes with BEST-RQ*: the fine-tuning
of whettenr/brq-att-alt-exp ``finetune/ft_brq.py``. To run:

    python train.py hparams/summarymixing.yaml --encoder_folder=<BEST-RQ output>/encoder --data_folder=/data/LibriSpeech

The encoder exported by pretraining (``recipes/LibriSpeech/BEST-RQ``) is loaded whole (fbank, global
normalisation statistics, CNN front-end, Conformer) and fine-tuned with a head of three Linear-LayerNorm-LeakyReLU
blocks and a Linear to the characters: two AdamW optimizers (head, encoder), each rate annealed by NewBob on the
validation loss, speed perturbation, DropFreq and DropChunk with the original batch concatenated. Validation
decodes greedily; the checkpoint with the lowest validation WER is tested on each test set greedily and, with a
KenLM n-gram (``--kenlm_model_path``), by beam search. The tested model is exported to
``<output_folder>/transcriber`` for ``speechbrain_ext.inference.MixerASR``.
"""

import json
import sys
from pathlib import Path

import speechbrain as sb
import torch
from hyperpyyaml import load_hyperpyyaml
from speechbrain.utils.distributed import if_main_process, run_on_main
from speechbrain.utils.logger import get_logger

from speechbrain_ext.asr import encoder_features, encoder_parameter_groups, export_recognizer, set_learning_rate
from speechbrain_ext.data.dataset import audio_dataset
from speechbrain_ext.data.librispeech import prepare_librispeech
from speechbrain_ext.files import atomic_folder, atomic_writer
from speechbrain_ext.mp3s.text import CharacterUnits, CTCDecoder, TranscriptionStats
from speechbrain_ext.training import (
    ResilientBrain,
    check_training_options,
    optimizer_state_digest,
    promote_run_hyperparams,
    write_run_hyperparams,
)

logger = get_logger(__name__)


class CTCFineTuneBrain(ResilientBrain):
    """CTC on characters from a pretrained encoder fine-tuned with its head; WER and CER outside training.

    modules: ``encoder`` (a ``SpeechEncoder``), ``head`` (``CTCHead``) and, with ``layer_output: weighted``,
    ``layer_weights``. ``decoder`` (greedy, and beam search for the test) and ``units`` are set before fitting.
    The encoder learns only from optimizer step ``freeze_encoder_steps`` on (before: no gradients, no step).
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.checkpointer is not None and self.layer_weights() is not None:
            self.checkpointer.add_recoverable("layer_weights", self.layer_weights())

    def layer_weights(self):
        return getattr(self.modules, "layer_weights", None)

    def encoder_frozen(self):
        return self.optimizer_step < self.hparams.freeze_encoder_steps

    def compute_forward(self, batch, stage):
        """Log-probabilities of the characters (B, T, C) and the frames' relative lengths (B,)."""
        batch = batch.to(self.device)
        wavs, wav_lens = batch.sig
        if stage == sb.Stage.TRAIN and self.hparams.augment:
            wavs, wav_lens = self.hparams.wav_augment(wavs, wav_lens)  # the original batch and its augmented copy
        frozen = stage != sb.Stage.TRAIN or self.encoder_frozen()
        feats, lengths = encoder_features(self.modules.encoder, wavs, wav_lens, self.layer_weights(),
                                          grad=not frozen)
        return self.modules.head(feats).log_softmax(dim=-1), lengths

    def compute_objectives(self, predictions, batch, stage):
        """The CTC loss of the transcripts' characters; outside training, the decoded words are scored."""
        log_probs, lengths = predictions
        chars, char_lens = batch.char_encoded
        if stage == sb.Stage.TRAIN and self.hparams.augment:
            chars = self.hparams.wav_augment.replicate_labels(chars)
            char_lens = self.hparams.wav_augment.replicate_labels(char_lens)
        if stage != sb.Stage.TRAIN:
            self.transcripts["greedy"].append(batch.id, self.decoder(log_probs, lengths), batch.wrd)
            if stage == sb.Stage.TEST and "beam" in self.transcripts:
                self.transcripts["beam"].append(batch.id, self.decoder(log_probs, lengths, beam=True), batch.wrd)
        return self.hparams.ctc_cost(log_probs, chars.to(self.device), lengths, char_lens.to(self.device))

    def init_optimizers(self):
        """AdamW for the head (and layer weights) and AdamW for the encoder, each with its NewBob schedule."""
        head_params = list(self.modules.head.parameters())
        if self.layer_weights() is not None:
            head_params += list(self.layer_weights().parameters())
        self.model_optimizer = self.hparams.model_opt_class(head_params)
        encoder = getattr(self.modules.encoder, "module", self.modules.encoder)  # DDP wraps it
        groups = encoder_parameter_groups(encoder, self.hparams.layerwise_lr_decay)
        self.encoder_optimizer = self.hparams.encoder_opt_class(groups)
        set_learning_rate(self.encoder_optimizer, self.hparams.lr_encoder)
        self.optimizers_dict = {"model_optimizer": self.model_optimizer, "encoder_optimizer": self.encoder_optimizer}
        if self.checkpointer is not None:
            self.checkpointer.add_recoverable("model_optimizer", self.model_optimizer)
            self.checkpointer.add_recoverable("encoder_optimizer", self.encoder_optimizer)

    def freeze_optimizers(self, optimizers):
        if self.encoder_frozen():
            return {"model_optimizer": optimizers["model_optimizer"]}
        return optimizers

    def optimizers_step(self):
        """SpeechBrain's step, with each optimizer's gradient norm clipped over all its parameter groups
        (SpeechBrain clips the first group only: the layer-wise rates make several)."""
        valid = self.freeze_optimizers(self.optimizers_dict)
        for optimizer in valid.values():
            self.scaler.unscale_(optimizer)
            params = [p for group in optimizer.param_groups for p in group["params"]]
            torch.nn.utils.clip_grad_norm_(params, self.max_grad_norm)
        if not self.scaler.is_enabled() and self.skip_nonfinite_grads:
            self.check_gradients()
        for optimizer in valid.values():
            self.scaler.step(optimizer)
        self.scaler.update()
        for optimizer in valid.values():
            optimizer.zero_grad(set_to_none=True)
        self.optimizer_step += 1

    def on_fit_start(self):
        super().on_fit_start()  # restores the latest checkpoint, if any
        if self.optimizer_step > 0:
            digest = f"{optimizer_state_digest(self.model_optimizer.state_dict()):.12g}"
            self.hparams.train_logger.log_stats({"resumed at optimizer step": self.optimizer_step,
                                                 "head optimizer state": digest})

    def on_fit_batch_end(self, batch, outputs, loss, should_step):
        if should_step and self.optimizer_step % self.hparams.log_interval == 0:
            self.hparams.train_logger.log_stats({"optimizer step": self.optimizer_step},
                                                train_stats={"loss": float(loss.detach())})

    def on_stage_start(self, stage, epoch=None):
        self.transcripts = {"greedy": TranscriptionStats()}
        if stage == sb.Stage.TEST and self.decoder.searcher is not None:
            self.transcripts["beam"] = TranscriptionStats()
        super().on_stage_start(stage, epoch)

    def on_stage_end(self, stage, stage_loss, epoch=None):
        stats = {"loss": stage_loss}
        if stage == sb.Stage.TRAIN:
            self.train_stats = stats
            return
        stats.update(self.transcripts["greedy"].summarize())
        if stage == sb.Stage.VALID:
            old_lr_model, new_lr_model = self.hparams.lr_annealing_model(stage_loss)
            old_lr_encoder, new_lr_encoder = self.hparams.lr_annealing_encoder(stage_loss)
            set_learning_rate(self.model_optimizer, new_lr_model)
            set_learning_rate(self.encoder_optimizer, new_lr_encoder)
            meta = {"epoch": epoch, "optimizer step": self.optimizer_step, "lr_model": old_lr_model,
                    "lr_encoder": old_lr_encoder}
            self.hparams.train_logger.log_stats(meta, train_stats=getattr(self, "train_stats", None),
                                                valid_stats=stats)
            self.checkpointer.save_and_keep_only(meta={"WER": stats["WER"], "CER": stats["CER"]},
                                                 min_keys=[self.hparams.best_key])
            return
        for decoding, transcripts in self.transcripts.items():
            name = self.decoding_names[decoding]
            self.test_results[(self.test_set_name, name)] = transcripts.summarize()
            if if_main_process():
                transcripts.write(Path(self.hparams.output_folder) / f"hypotheses_{self.test_set_name}_{name}.csv")
        if "beam" in self.transcripts:
            beam = self.transcripts["beam"].summarize()
            stats.update({f"{self.decoding_names['beam']} {key}": value for key, value in beam.items()})
        self.hparams.train_logger.log_stats({"Epoch loaded": self.hparams.epoch_counter.current,
                                             "test set": self.test_set_name}, test_stats=stats)


def dataio_prepare(hparams, manifests):
    """The training set (``train_splits``, ordered by ``sorting``), the validation set and the test sets by name,
    giving ``sig``, ``wrd`` and ``char_encoded``; and the character units of the head's outputs.

    Files that are unreadable, of the wrong rate, or outside ``min_duration`` .. ``max_duration`` (training
    only) are left out and listed in ``skipped_audio.txt``; a file that fails to decode is left out of its batch
    and of later runs (``audio_undecodable.tsv``). The characters are ``characters`` (LibriSpeech's 28), the
    blank at ``blank_index``: a transcript with another character is an error naming it.
    """
    folder = Path(hparams["output_folder"])
    sorting = hparams["sorting"]
    if sorting not in ("ascending", "descending", "random"):
        raise ValueError(f"sorting must be 'ascending', 'descending' or 'random', got {sorting!r}")

    def dataset(splits, training):
        data = audio_dataset(
            [manifests[split] for split in splits], hparams["sample_rate"], hparams["min_duration"],
            hparams["max_duration"] if training else None, report_file=folder / "skipped_audio.txt",
            header_cache=folder / "audio_headers.json", sort_by_duration=not training or sorting == "ascending",
            check_decoding=hparams["check_decoding"],
        )
        if training and sorting == "descending":
            data = data.filtered_sorted(sort_key="duration", reverse=True)
        return data

    train_set = dataset(hparams["train_splits"], True)
    valid_set = dataset(hparams["dev_splits"], False)
    test_sets = {split: dataset([split], False) for split in hparams["test_splits"]}
    datasets = [train_set, valid_set, *test_sets.values()]

    characters = hparams["characters"]
    for data in datasets:
        unknown = {char for row in data.data.values() for char in row["wrd"]} - set(characters)
        if unknown:
            raise ValueError(f"the transcripts hold characters outside characters={characters!r}: "
                             f"{''.join(sorted(unknown))!r}; add them to characters (and raise output_neurons)")
    label_encoder = hparams["label_encoder"]
    label_encoder.load_or_create(path=Path(hparams["save_folder"]) / "label_encoder.txt",
                                 from_iterables=[list(characters)],
                                 special_labels={"blank_label": hparams["blank_index"]})
    if len(label_encoder) > hparams["output_neurons"]:
        raise ValueError(f"{len(label_encoder)} characters with the blank, but output_neurons="
                         f"{hparams['output_neurons']}")
    label_encoder.ignore_len()  # outputs past the characters read as nothing (CharacterUnits)

    @sb.utils.data_pipeline.takes("wrd")
    @sb.utils.data_pipeline.provides("wrd", "char_encoded")
    def text_pipeline(wrd):
        yield wrd
        yield label_encoder.encode_sequence_torch(list(wrd))

    sb.dataio.dataset.add_dynamic_item(datasets, text_pipeline)
    sb.dataio.dataset.set_output_keys(datasets, ["id", "sig", "wrd", "char_encoded"])
    return train_set, valid_set, test_sets, CharacterUnits(label_encoder, hparams["output_neurons"])


def check_language_model(kenlm_model_path):
    """A clear error, before any data work, when the n-gram is missing or KenLM is not installed."""
    if kenlm_model_path is None:
        return
    if not Path(kenlm_model_path).is_file():
        raise FileNotFoundError(f"kenlm_model_path={kenlm_model_path} does not exist (an ARPA or KenLM binary "
                                "n-gram, e.g. LibriSpeech's 4-gram.arpa from openslr.org/11)")
    try:
        import kenlm  # noqa: F401
        import pygtrie  # noqa: F401
    except ImportError as error:
        raise ImportError(f"kenlm_model_path={kenlm_model_path} needs KenLM and pygtrie ({error}): "
                          "pip install 'speechbrain_ext[lm]', or leave kenlm_model_path out to test greedily "
                          "only") from error


def main(argv):
    hparams_file, run_opts, overrides = sb.parse_arguments(argv)
    sb.utils.distributed.ddp_init_group(run_opts)
    with open(hparams_file, encoding="utf-8") as fin:
        hparams = load_hyperpyyaml(fin, overrides)  # loads the encoder: a folder not the YAML's is refused here
    check_training_options(hparams, run_opts)
    check_language_model(hparams["kenlm_model_path"])
    write_run_hyperparams(hparams["output_folder"], hparams_file, overrides)

    splits = list(dict.fromkeys(hparams["train_splits"] + hparams["dev_splits"] + hparams["test_splits"]))
    manifests = run_on_main(prepare_librispeech, kwargs={
        "data_folder": hparams["data_folder"], "save_folder": hparams["output_folder"], "splits": splits,
        "skip_prep": hparams["skip_prep"],
    })
    train_set, valid_set, test_sets, units = dataio_prepare(hparams, manifests)

    brain = CTCFineTuneBrain(modules=hparams["modules"], hparams=hparams, run_opts=run_opts,
                             checkpointer=hparams["checkpointer"])
    beam = hparams["test_beam_search"] if hparams["kenlm_model_path"] or hparams["beam_search_without_lm"] else None
    brain.decoder = CTCDecoder(units, hparams["blank_index"], beam)
    brain.decoding_names = {"greedy": "greedy", "beam": "beam_lm" if hparams["kenlm_model_path"] else "beam"}
    brain.fit(hparams["epoch_counter"], train_set, valid_set,
              train_loader_kwargs=hparams["train_dataloader_opts"],
              valid_loader_kwargs=hparams["valid_dataloader_opts"])

    brain.test_results = {}
    for name, test_set in test_sets.items():
        brain.test_set_name = name
        brain.evaluate(test_set, min_key=hparams["best_key"], test_loader_kwargs=hparams["test_dataloader_opts"])
    if if_main_process():
        write_results(hparams, brain)
        card = {"error_rates": brain.test_results, "optimizer_steps": brain.optimizer_step,
                "epochs": hparams["epoch_counter"].current, "pretrained encoder": hparams["encoder_folder"],
                "command": " ".join(["python", *sys.argv])}
        with atomic_folder(hparams["transcriber_folder"]) as staging:
            export_recognizer(staging, hparams["encoder"], hparams["head"], hparams["label_encoder"],
                              hparams["layer_weights"], hparams["blank_index"], card)
        logger.info("recognizer written to %s", hparams["transcriber_folder"])
    run_on_main(promote_run_hyperparams, args=[hparams["output_folder"]])


def write_results(hparams, brain):
    """``results.json``: one row per test set, decoding and metric (WER, CER in %)."""
    rows = [{"task": "LibriSpeech ASR", "head": "CTC fine-tuned", "test_set": test_set, "decoding": decoding,
             "metric": metric, "value": value, "encoder": str(hparams["encoder_folder"]), "mixer": hparams["mixer"]}
            for (test_set, decoding), rates in brain.test_results.items() for metric, value in rates.items()]
    with atomic_writer(Path(hparams["output_folder"]) / "results.json") as out:
        out.write(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
