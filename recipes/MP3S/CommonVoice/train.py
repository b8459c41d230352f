#!/usr/bin/env python3
"""MP3S recipe: Common Voice ASR (one language: Welsh or Basque in MP3S; BPE units, CTC) on a frozen BEST-RQ
encoder.

A SentencePiece BPE of 100 units is trained on the training transcripts; a head is trained with CTC on those
units, on the learned softmax-weighted sum of all the encoder's layers. Validation decodes greedily, the test
with SpeechBrain's CTC beam search. The clips (48 kHz MP3) are resampled to 16 kHz when read. The head is the
YAML's (``hparams/LSTM.yaml``: a 2-layer BiLSTM; ``hparams/linear.yaml``: one sigmoid layer):

    python train.py hparams/LSTM.yaml --ssl_folder=<pretraining output>/encoder --data_folder=/data/cv-corpus/cy

The checkpoint with the lowest validation WER is tested: ``results.json`` has its WER and CER (%),
``hypotheses_test.csv`` every decoded transcript beside its reference, ``layer_weights.json`` the learned
weights; the tokenizer is ``save/<output_neurons>_<token_type>.model``.
"""

import sys

import speechbrain as sb
import torch
from speechbrain.utils.distributed import run_on_main

from speechbrain_ext.data.commonvoice import prepare_commonvoice
from speechbrain_ext.mp3s.brain import DownstreamBrain, audio_datasets, start_run
from speechbrain_ext.mp3s.text import CTCDecoder, SentencePieceUnits, TranscriptionStats, train_sentencepiece


class BPECTCBrain(DownstreamBrain):
    """CTC on SentencePiece units from the weighted layers of the frozen encoder; WER and CER outside training.

    ``decoder`` (a :class:`~speechbrain_ext.mp3s.text.CTCDecoder` of the units) is set before training.
    """

    error_key = "WER"
    metrics = ("WER", "CER")

    def compute_forward(self, batch, stage):
        """Log-probabilities of the units (B, T, C) at each frame, the frames' relative lengths, and outside
        training the words decoded (greedily in validation, by beam search in the test)."""
        feats, lengths = self.features(batch)
        log_probs = self.modules.head(feats, lengths).log_softmax(dim=-1)
        words = None if stage == sb.Stage.TRAIN else self.decoder(log_probs, lengths, beam=stage == sb.Stage.TEST)
        return log_probs, lengths, words

    def compute_objectives(self, predictions, batch, stage):
        """The CTC loss of the transcripts' units; the decoded words are scored against the transcripts."""
        log_probs, lengths, words = predictions
        if words is not None:
            self.transcripts.append(batch.id, words, batch.wrd)
        tokens, token_lens = batch.tokens
        return self.hparams.ctc_cost(log_probs, tokens.to(self.device), lengths, token_lens.to(self.device))

    def on_stage_start(self, stage, epoch=None):
        self.transcripts = None if stage == sb.Stage.TRAIN else TranscriptionStats()
        super().on_stage_start(stage, epoch)

    def on_stage_end(self, stage, stage_loss, epoch=None):
        if stage == sb.Stage.TRAIN:
            self.finish_stage(stage, {"loss": stage_loss}, epoch)
            return
        if stage == sb.Stage.TEST and sb.utils.distributed.if_main_process():
            self.transcripts.write(f"{self.hparams.output_folder}/hypotheses_{self.test_set_name}.csv")
        self.finish_stage(stage, {"loss": stage_loss, **self.transcripts.summarize()}, epoch)


def dataio_prepare(hparams, manifests):
    """Train, dev and test sets giving ``sig`` (16 kHz), ``wrd`` and ``tokens``, and the units of the
    SentencePiece model trained (once) on the training transcripts."""
    datasets = audio_datasets(hparams, [manifests["train"], manifests["dev"], manifests["test"]], resample=True)
    tokenizer = train_sentencepiece(hparams["save_folder"], manifests["train"], hparams["output_neurons"],
                                    hparams["token_type"], hparams["character_coverage"])

    @sb.utils.data_pipeline.takes("wrd")
    @sb.utils.data_pipeline.provides("wrd", "tokens")
    def text_pipeline(wrd):
        yield wrd
        yield torch.LongTensor(tokenizer.sp.encode_as_ids(wrd))

    sb.dataio.dataset.add_dynamic_item(datasets, text_pipeline)
    sb.dataio.dataset.set_output_keys(datasets, ["id", "sig", "wrd", "tokens"])
    return (*datasets, SentencePieceUnits(tokenizer, hparams["output_neurons"]))


if __name__ == "__main__":
    hparams, run_opts = start_run(sys.argv[1:])  # command line, DDP, the YAML, the run folder
    manifests = run_on_main(prepare_commonvoice, kwargs={
        "data_folder": hparams["data_folder"], "save_folder": hparams["output_folder"],
        "skip_prep": hparams["skip_prep"],
    })
    train_set, dev_set, test_set, units = dataio_prepare(hparams, manifests)

    brain = BPECTCBrain(hparams["modules"], hparams=hparams, run_opts=run_opts, checkpointer=hparams["checkpointer"])
    brain.decoder = CTCDecoder(units, hparams["blank_index"], hparams["test_beam_search"], hparams["test_decoding"])
    brain.write_results(brain.fit_and_test(train_set, dev_set, {"test": test_set}))
