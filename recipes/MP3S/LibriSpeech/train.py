#!/usr/bin/env python3
"""MP3S recipe: LibriSpeech ASR (train-clean-100, characters, CTC) on a frozen BEST-RQ encoder.

A head is trained with CTC on the characters of the transcripts, on the learned softmax-weighted sum of all
the encoder's layers; validation decodes greedily, the test as ``test_decoding`` says (``greedy``, the paper's
runs, or ``beam``, MP3S: SpeechBrain's CTC beam search). With ``ngram_lm_path`` (a 4-gram), the test sets are
decoded again by a beam search with it (``lm_beam_search``), as the paper's ``--language_modelling`` runs. The
head is the YAML's (``hparams/LSTM.yaml``: a 2-layer BiLSTM; ``hparams/contextnet.yaml``: ContextNet):

    python train.py hparams/LSTM.yaml --ssl_folder=<pretraining output>/encoder --data_folder=/data/LibriSpeech

The checkpoint with the lowest validation WER is tested on test-clean and test-other: ``results.json`` has
their WER and CER (%) (and ``WER_lm``, ``CER_lm`` with the 4-gram), ``hypotheses_<test set>.csv`` every decoded
transcript beside its reference (``hypotheses_<test set>_lm.csv``), ``layer_weights.json`` the learned weights.
"""

import sys

import speechbrain as sb
from speechbrain.utils.distributed import run_on_main

from speechbrain_ext.data.librispeech import prepare_librispeech
from speechbrain_ext.mp3s.brain import DownstreamBrain, audio_datasets, start_run
from speechbrain_ext.mp3s.text import CharacterUnits, CTCDecoder, TranscriptionStats


class CharacterCTCBrain(DownstreamBrain):
    """CTC on characters from the weighted layers of the frozen encoder; WER and CER outside training.

    ``decoder`` (a :class:`~speechbrain_ext.mp3s.text.CTCDecoder` of the characters) is set before training,
    and ``lm_decoder`` (None: no language model) decodes the test sets a second time.
    """

    error_key = "WER"
    metrics = ("WER", "CER")
    lm_decoder = None

    def compute_forward(self, batch, stage):
        """Log-probabilities of the characters (B, T, C) at each frame, and the frames' relative lengths."""
        feats, lengths = self.features(batch)
        return self.modules.head(feats, lengths).log_softmax(dim=-1), lengths

    def compute_objectives(self, predictions, batch, stage):
        """The CTC loss of the transcripts' characters; outside training, the words decoded are scored."""
        log_probs, lengths = predictions
        if stage != sb.Stage.TRAIN:
            words = self.decoder(log_probs, lengths, beam=stage == sb.Stage.TEST)
            self.transcripts.append(batch.id, words, batch.wrd)
        if stage == sb.Stage.TEST and self.lm_decoder is not None:
            self.lm_transcripts.append(batch.id, self.lm_decoder(log_probs, lengths, beam=True), batch.wrd)
        chars, char_lens = batch.char_encoded
        return self.hparams.ctc_cost(log_probs, chars.to(self.device), lengths, char_lens.to(self.device))

    def on_stage_start(self, stage, epoch=None):
        self.transcripts = TranscriptionStats()
        self.lm_transcripts = TranscriptionStats()
        super().on_stage_start(stage, epoch)

    def on_stage_end(self, stage, stage_loss, epoch=None):
        stats = {"loss": stage_loss}
        if stage != sb.Stage.TRAIN:
            stats.update(self.transcripts.summarize())
        if stage == sb.Stage.TEST and self.lm_decoder is not None:
            stats.update({f"{name}_lm": value for name, value in self.lm_transcripts.summarize().items()})
        if stage == sb.Stage.TEST and sb.utils.distributed.if_main_process():
            folder = self.hparams.output_folder
            self.transcripts.write(f"{folder}/hypotheses_{self.test_set_name}.csv")
            if self.lm_decoder is not None:
                self.lm_transcripts.write(f"{folder}/hypotheses_{self.test_set_name}_lm.csv")
        self.finish_stage(stage, stats, epoch)


def dataio_prepare(hparams, manifests):
    """The training set (the first of ``train_splits``), the validation set and the test sets by name, giving
    ``sig``, ``wrd`` and ``char_encoded``; and the characters (numbered from the training transcripts)."""
    train_set, valid_set, *test_sets = audio_datasets(
        hparams, [manifests[name] for name in (hparams["train_splits"][0], hparams["dev_splits"][0],
                                              *hparams["test_splits"])]
    )
    datasets = [train_set, valid_set, *test_sets]
    label_encoder = hparams["label_encoder"]

    @sb.utils.data_pipeline.takes("wrd")
    @sb.utils.data_pipeline.provides("wrd", "char_list", "char_encoded")
    def text_pipeline(wrd):
        yield wrd
        char_list = list(wrd)
        yield char_list
        yield label_encoder.encode_sequence_torch(char_list)

    sb.dataio.dataset.add_dynamic_item(datasets, text_pipeline)
    label_encoder.load_or_create(
        path=f"{hparams['save_folder']}/label_encoder.txt", from_didatasets=[train_set], output_key="char_list",
        special_labels={"blank_label": hparams["blank_index"], "unk_label": "<unk>"}, sequence_input=True,
    )
    if len(label_encoder) > hparams["output_neurons"]:
        raise ValueError(f"the transcripts have {len(label_encoder)} symbols (with blank) but the head has "
                         f"output_neurons={hparams['output_neurons']}: raise output_neurons in the YAML")
    sb.dataio.dataset.set_output_keys(datasets, ["id", "sig", "wrd", "char_encoded"])
    units = CharacterUnits(label_encoder, hparams["output_neurons"])
    return train_set, valid_set, dict(zip(hparams["test_splits"], test_sets)), units


if __name__ == "__main__":
    hparams, run_opts = start_run(sys.argv[1:])  # command line, DDP, the YAML, the run folder
    manifests = run_on_main(prepare_librispeech, kwargs={
        "data_folder": hparams["data_folder"], "save_folder": hparams["output_folder"],
        "splits": list(dict.fromkeys(hparams["train_splits"] + hparams["dev_splits"] + hparams["test_splits"])),
        "skip_prep": hparams["skip_prep"],
    })
    train_set, valid_set, test_sets, units = dataio_prepare(hparams, manifests)

    brain = CharacterCTCBrain(hparams["modules"], hparams=hparams, run_opts=run_opts,
                              checkpointer=hparams["checkpointer"])
    brain.decoder = CTCDecoder(units, hparams["blank_index"], hparams["test_beam_search"], hparams["test_decoding"])
    if hparams.get("ngram_lm_path"):
        brain.lm_decoder = CTCDecoder(units, hparams["blank_index"], hparams["lm_beam_search"])
        brain.metrics = (*brain.metrics, "WER_lm", "CER_lm")
    brain.write_results(brain.fit_and_test(train_set, valid_set, test_sets))
