#!/usr/bin/env python3
"""MP3S recipe: VoxCeleb1 speaker verification on a frozen BEST-RQ encoder (EER on the veri_test2 trials).

A speaker-embedding head is trained as a classifier of the development speakers on the learned
softmax-weighted sum of all the encoder's layers (random 3 s crops, additive angular margin loss); the
verification trials are then scored by the cosine similarity of the embeddings of whole utterances. The head
is the YAML's (``hparams/ecapa_tdnn.yaml``: ECAPA-TDNN; ``hparams/Xvectors.yaml``: x-vectors):

    python train.py hparams/ecapa_tdnn.yaml --ssl_folder=<pretraining output>/encoder --data_folder=/data/VoxCeleb1

The checkpoint with the lowest validation error is tested: ``results.json`` has its speaker accuracy on the
held-out utterances of the training speakers and the EER of the trials whose two utterances could be read,
scored with the embeddings of the last epoch's weights (``verification_weights: last``, the paper's runs) or of
that best checkpoint (``best``, MP3S); ``layer_weights.json`` the learned weights.
"""

import csv
import sys

import speechbrain as sb
import torch
import torch.nn.functional as F
from speechbrain.utils.distributed import run_on_main
from speechbrain.utils.logger import get_logger
from speechbrain.utils.metric_stats import EER

from speechbrain_ext.mp3s.brain import DownstreamBrain, audio_datasets, load_classes, start_run

logger = get_logger(__name__)


def random_crops(wavs, wav_lens, size):
    """One random window of ``size`` samples of each utterance of (B, S) ``wavs`` (shorter ones whole and
    zero-padded), as MP3S's ``random_chunk``; returns the windows (B, size) and their relative lengths."""
    width = min(size, wavs.shape[1])
    counts = torch.round(wav_lens * wavs.shape[1]).long().tolist()
    crops = wavs.new_zeros(wavs.shape[0], width)
    kept = []
    for i, count in enumerate(counts):
        start = int(torch.randint(0, count - width + 1, ()).item()) if count > width else 0
        piece = wavs[i, start:start + min(width, count)]
        crops[i, : piece.shape[0]] = piece
        kept.append(piece.shape[0] / width)
    return crops, torch.tensor(kept, dtype=wav_lens.dtype, device=wav_lens.device)


class SpeakerBrain(DownstreamBrain):
    """Speaker classification in training; verification by cosine scoring of the head's embeddings.

    With ``crop_seconds`` (MP3S: 3 s), training and validation batches are random windows of that length
    of each utterance; testing, embeddings and trials use whole utterances.
    """

    def compute_forward(self, batch, stage):
        """Speaker scores (B, C) of each utterance (of a random crop of it, outside testing)."""
        wavs, wav_lens = batch.sig
        if self.hparams.crop_seconds and stage != sb.Stage.TEST:
            wavs, wav_lens = random_crops(wavs, wav_lens, int(self.hparams.crop_seconds * self.hparams.sample_rate))
        feats, lengths = self.modules.ssl(wavs.to(self.device), wav_lens.to(self.device))
        return self.modules.head(feats, lengths)

    def compute_objectives(self, scores, batch, stage):
        """The YAML's ``compute_cost`` (the additive angular margin loss) on the speakers; counts the correct."""
        speakers = batch.spk_id_encoded.data.view(-1).to(self.device)
        if stage != sb.Stage.TRAIN:
            self.correct += int((scores.argmax(dim=-1) == speakers).sum())
            self.total += len(speakers)
        return self.hparams.compute_cost(scores, speakers)

    def on_stage_start(self, stage, epoch=None):
        self.correct, self.total = 0, 0
        super().on_stage_start(stage, epoch)

    def on_stage_end(self, stage, stage_loss, epoch=None):
        stats = {"loss": stage_loss}
        if self.total:
            stats["accuracy"] = self.correct / self.total
            stats["error_rate"] = 1.0 - stats["accuracy"]
        self.finish_stage(stage, stats, epoch)

    @torch.no_grad()
    def embeddings(self, dataset):
        """Normalised embeddings of every utterance of ``dataset`` whose audio decodes, by ID."""
        self.modules.eval()
        # Brain.evaluate writes its checkpoint prefix into the options it is given: not a loader option.
        options = {key: value for key, value in self.hparams.test_dataloader_opts.items() if key != "ckpt_prefix"}
        loader = self.make_dataloader(dataset, sb.Stage.TEST, ckpt_prefix=None, **options)
        vectors = {}
        for batch in loader:
            if batch is None:  # every utterance of it failed to decode (logged)
                continue
            wavs, wav_lens = batch.sig
            limit = self.hparams.max_verification_samples
            if limit is not None and wavs.shape[1] > limit:
                # The paper's runs cut every utterance to its first `limit` samples (its relative length too).
                wav_lens = torch.clamp(wav_lens * wavs.shape[1], max=limit) / limit
                wavs = wavs[:, :limit]
            feats, lengths = self.modules.ssl(wavs.to(self.device), wav_lens.to(self.device))
            vectors.update(zip(batch.id, F.normalize(self.modules.head.embed(feats, lengths), dim=-1).cpu()))
        return vectors

    def verify(self, dataset, trials):
        """Equal error rate of the ``trials`` (label, enrol ID, test ID) with cosine scores."""
        vectors = self.embeddings(dataset)
        usable = [(label, enrol, test) for label, enrol, test in trials if enrol in vectors and test in vectors]
        if len(usable) < len(trials):
            logger.warning("left out %d of %d trials: their audio failed to decode", len(trials) - len(usable),
                           len(trials))
        scores = {1: [], 0: []}
        for label, enrol, test in usable:
            scores[label].append(float(vectors[enrol] @ vectors[test]))
        if not scores[1] or not scores[0]:
            raise ValueError("verification needs positive and negative trials")
        eer, _ = EER(torch.tensor(scores[1]), torch.tensor(scores[0]))
        self.hparams.train_logger.log_stats({"verification trials": len(usable)}, test_stats={"EER": eer})
        return float(eer)


def dataio_prepare(hparams, manifests):
    """Training and validation sets of the development speakers (``sig``, ``spk_id_encoded``), the
    verification utterances (``sig``) and the trials between utterances whose audio is usable."""
    train_set, valid_set, test_set = audio_datasets(hparams, [manifests[name] for name in ("train", "valid", "test")])
    speakers = load_classes(hparams, train_set, "spk_id")

    @sb.utils.data_pipeline.takes("spk_id")
    @sb.utils.data_pipeline.provides("spk_id_encoded")
    def speaker_pipeline(spk_id):
        return speakers.encode_label_torch(spk_id)

    sb.dataio.dataset.add_dynamic_item([train_set, valid_set], speaker_pipeline)
    sb.dataio.dataset.set_output_keys([train_set, valid_set], ["id", "sig", "spk_id_encoded"])

    kept = set(test_set.data_ids)  # trials of left-out audio cannot be scored
    with open(manifests["trials"], newline="", encoding="utf-8") as handle:
        trials = [(int(row["label"]), row["enrol"], row["test"]) for row in csv.DictReader(handle)
                  if row["enrol"] in kept and row["test"] in kept]
    return train_set, valid_set, test_set, trials


if __name__ == "__main__":
    # Command line, DDP, the YAML (its num_classes prepares the manifests and counts their speakers)
    hparams, run_opts = start_run(sys.argv[1:])
    manifests = run_on_main(hparams["prepare_voxceleb1"])
    train_set, valid_set, test_set, trials = dataio_prepare(hparams, manifests)

    if hparams["verification_weights"] not in ("last", "best"):
        raise ValueError(f"verification_weights must be 'last' or 'best', got {hparams['verification_weights']!r}")
    brain = SpeakerBrain(hparams["modules"], hparams=hparams, run_opts=run_opts, checkpointer=hparams["checkpointer"])
    brain.train_head(train_set, valid_set)
    eer = brain.verify(test_set, trials) if hparams["verification_weights"] == "last" else None
    # The speaker accuracy on held-out utterances of the training speakers (best checkpoint), then the trials
    results = brain.test_best({"valid": valid_set})
    results["veri_test2"] = {"EER": eer if eer is not None else brain.verify(test_set, trials)}
    brain.write_results(results)
