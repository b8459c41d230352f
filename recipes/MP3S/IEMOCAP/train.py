#!/usr/bin/env python3
"""MP3S recipe: IEMOCAP emotion recognition (4 classes) on a frozen BEST-RQ encoder.

A head is trained on the learned softmax-weighted sum of all the encoder's layers, with one speaker held out
for testing (``test_spk_id``, 1-10) and the other speaker of that session for validation; MP3S reports the
accuracy averaged over the 10 folds. The head is the YAML's (``hparams/linear.yaml``: mean pooling and a
linear layer; ``hparams/ecapa_tdnn.yaml``: ECAPA-TDNN and a cosine classifier):

    python train.py hparams/linear.yaml --ssl_folder=<pretraining output>/encoder --data_folder=/data/IEMOCAP \\
        --test_spk_id=1

The checkpoint with the lowest validation error is tested: ``results.json`` has its accuracy,
``test_emotions.txt`` its accuracy per emotion and confusions, ``layer_weights.json`` the learned weights.
"""

import sys

import speechbrain as sb
from speechbrain.utils.distributed import run_on_main
from speechbrain.utils.metric_stats import ClassificationStats

from speechbrain_ext.mp3s.brain import DownstreamBrain, audio_datasets, load_classes, start_run


class EmotionBrain(DownstreamBrain):
    """Emotion classes from the weighted layers of the frozen encoder; accuracy per emotion outside training."""

    def compute_forward(self, batch, stage):
        """Emotion scores (B, C): the head on the weighted layers (B, T, E) of the utterances."""
        return self.modules.head(*self.features(batch))

    def compute_objectives(self, scores, batch, stage):
        """The YAML's ``compute_cost`` (cross-entropy) on the emotions; outside training, the predicted
        emotions are kept beside the true ones."""
        emotions = batch.emo_encoded.data.view(-1).to(self.device)
        if stage != sb.Stage.TRAIN:
            predicted = self.hparams.label_encoder.decode_ndim(scores.argmax(dim=-1))
            self.emotion_stats.append(batch.id, predicted, batch.emo)
        return self.hparams.compute_cost(scores, emotions)

    def on_stage_start(self, stage, epoch=None):
        super().on_stage_start(stage, epoch)
        if stage != sb.Stage.TRAIN:
            self.emotion_stats = ClassificationStats()

    def on_stage_end(self, stage, stage_loss, epoch=None):
        stats = {"loss": stage_loss}
        if stage != sb.Stage.TRAIN:
            stats["accuracy"] = self.emotion_stats.summarize("accuracy")
            stats["error_rate"] = 1.0 - stats["accuracy"]
        if stage == sb.Stage.TEST and sb.utils.distributed.if_main_process():
            with open(self.hparams.test_emotions_file, "w", encoding="utf-8") as out:
                self.emotion_stats.write_stats(out)  # accuracy per emotion, confusions
        self.finish_stage(stage, stats, epoch)


def dataio_prepare(hparams, manifests):
    """The fold's "train", "valid" and "test" sets, giving ``sig``, ``emo`` and ``emo_encoded``."""
    names = ("train", "valid", "test")
    datasets = dict(zip(names, audio_datasets(hparams, [manifests[name] for name in names])))
    label_encoder = load_classes(hparams, datasets["train"], "emo")

    @sb.utils.data_pipeline.takes("emo")
    @sb.utils.data_pipeline.provides("emo", "emo_encoded")
    def emotion_pipeline(emo):
        yield emo
        yield label_encoder.encode_label_torch(emo)

    sb.dataio.dataset.add_dynamic_item(list(datasets.values()), emotion_pipeline)
    sb.dataio.dataset.set_output_keys(list(datasets.values()), ["id", "sig", "emo", "emo_encoded"])
    return datasets


if __name__ == "__main__":
    # Command line, DDP, the YAML (its num_classes prepares the fold's manifests and counts their emotions)
    hparams, run_opts = start_run(sys.argv[1:])
    datasets = dataio_prepare(hparams, run_on_main(hparams["prepare_iemocap"]))

    brain = EmotionBrain(hparams["modules"], hparams=hparams, run_opts=run_opts, checkpointer=hparams["checkpointer"])
    results = brain.fit_and_test(datasets["train"], datasets["valid"], {"test": datasets["test"]})
    brain.write_results(results)
