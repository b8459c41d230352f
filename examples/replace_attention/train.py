#!/usr/bin/env python3
"""SpeechBrain's own Conformer ``TransformerASR`` with a linear mixer in place of self-attention.

    python train.py hparams/replace_attention.yaml --data_folder=/data/LibriSpeech
    python train.py hparams/replace_attention.yaml --data_folder=... --mixer=fastformer --causal=True
    python train.py hparams/mixer_encoder.yaml --data_folder=...

``replace_attention.yaml`` builds the stock model and swaps its self-attention layers with
``!apply:speechbrain_ext.replace.replace_attention``; ``mixer_encoder.yaml`` puts a
``MixerConformerEncoder`` in place of its encoder (``!apply:speechbrain_ext.replace.replace_encoder``).
Characters, joint CTC + attention loss, greedy CTC character error rate at validation: an example of the
two ways in, small enough for a CPU, not a tuned recipe (no checkpoints, no language model, no beam search).
"""

import sys

import speechbrain as sb
import torch
from hyperpyyaml import load_hyperpyyaml

from speechbrain_ext.data.dataset import audio_dataset
from speechbrain_ext.data.librispeech import prepare_librispeech

ALPHABET = " 'ABCDEFGHIJKLMNOPQRSTUVWXYZ"  # index + 2: 0 is the CTC blank / padding, 1 is bos / eos


def encode_text(words: str) -> torch.Tensor:
    return torch.tensor([ALPHABET.index(c) + 2 for c in words.upper() if c in ALPHABET], dtype=torch.long)


class ASR(sb.Brain):
    def compute_forward(self, batch, stage):
        wavs, wav_lens = batch.sig
        tokens_bos, _ = batch.tokens_bos
        feats = self.hparams.normalize(self.hparams.compute_features(wavs), wav_lens)
        encoded, decoded = self.modules.asr(feats, tokens_bos, wav_lens, pad_idx=0)
        return self.modules.ctc_lin(encoded).log_softmax(-1), self.modules.seq_lin(decoded).log_softmax(-1), wav_lens

    def compute_objectives(self, predictions, batch, stage):
        p_ctc, p_seq, wav_lens = predictions
        tokens, token_lens = batch.tokens
        tokens_eos, eos_lens = batch.tokens_eos
        ctc = sb.nnet.losses.ctc_loss(p_ctc, tokens, wav_lens, token_lens, blank_index=0)
        seq = sb.nnet.losses.nll_loss(p_seq, tokens_eos, length=eos_lens)
        if stage != sb.Stage.TRAIN:
            hyps = sb.decoders.ctc_greedy_decode(p_ctc, wav_lens, blank_id=0)
            refs = sb.utils.data_utils.undo_padding(tokens, token_lens)
            self.cer_metric.append(batch.id, [[ALPHABET[i - 2] for i in h] for h in hyps],
                                   [[ALPHABET[i - 2] for i in r] for r in refs])
        weight = self.hparams.ctc_weight
        return weight * ctc + (1 - weight) * seq

    def on_stage_start(self, stage, epoch=None):
        if stage != sb.Stage.TRAIN:
            self.cer_metric = sb.utils.metric_stats.ErrorRateStats()

    def on_stage_end(self, stage, stage_loss, epoch=None):
        if stage == sb.Stage.TRAIN:
            self.train_loss = stage_loss
            return
        self.hparams.train_logger.log_stats(
            {"epoch": epoch}, train_stats={"loss": self.train_loss},
            valid_stats={"loss": stage_loss, "CER": self.cer_metric.summarize("error_rate")},
        )


def dataio(hparams):
    def dataset(split):
        data = audio_dataset([f"{hparams['output_folder']}/{split}.csv"], hparams["sample_rate"],
                             sort_by_duration=True)

        @sb.utils.data_pipeline.takes("wrd")
        @sb.utils.data_pipeline.provides("tokens", "tokens_bos", "tokens_eos")
        def text(words):
            tokens = encode_text(words)
            yield tokens
            yield torch.cat([torch.tensor([1]), tokens])
            yield torch.cat([tokens, torch.tensor([1])])

        data.add_dynamic_item(text)
        data.set_output_keys(["id", "sig", "tokens", "tokens_bos", "tokens_eos"])
        return data

    return dataset(hparams["train_split"]), dataset(hparams["valid_split"])


def main(argv):
    hparams_file, run_opts, overrides = sb.parse_arguments(argv)
    with open(hparams_file, encoding="utf-8") as fin:
        hparams = load_hyperpyyaml(fin, overrides)
    sb.create_experiment_directory(hparams["output_folder"], hyperparams_to_save=hparams_file, overrides=overrides)
    prepare_librispeech(hparams["data_folder"], hparams["output_folder"],
                        splits=(hparams["train_split"], hparams["valid_split"]))
    train_data, valid_data = dataio(hparams)
    brain = ASR(modules=hparams["modules"], opt_class=hparams["optimizer"], hparams=hparams, run_opts=run_opts)
    loader = {"batch_size": hparams["batch_size"]}
    brain.fit(hparams["epoch_counter"], train_data, valid_data,
              train_loader_kwargs=loader, valid_loader_kwargs=loader)
    return brain


if __name__ == "__main__":
    main(sys.argv[1:])
