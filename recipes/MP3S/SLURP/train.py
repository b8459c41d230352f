#!/usr/bin/env python3
"""MP3S recipe: SLURP intent classification (the scenario of a spoken command, 18 classes) on a frozen BEST-RQ
encoder.

A head is trained on the learned softmax-weighted sum of all the encoder's layers, on SLURP's real recordings
(train, devel, test). The head is the YAML's (``hparams/linear.yaml``: mean pooling and a linear layer;
``hparams/LSTM_linear.yaml``: a BiLSTM before them):

    python train.py hparams/linear.yaml --ssl_folder=<pretraining output>/encoder --data_folder=/data/SLURP

The checkpoint with the lowest validation error is tested: ``results.json`` has its accuracy on the test
recordings, ``layer_weights.json`` the learned weights.
"""

import sys

import speechbrain as sb
from speechbrain.utils.distributed import run_on_main

from speechbrain_ext.mp3s.brain import DownstreamBrain, audio_datasets, load_classes, start_run


class ScenarioBrain(DownstreamBrain):
    """The scenario of each command from the weighted layers of the frozen encoder, as MP3S's SLURP recipe."""

    def compute_forward(self, batch, stage):
        """Scenario scores (B, C) of each recording."""
        feats, lengths = self.features(batch)
        return self.modules.head(feats, lengths)

    def compute_objectives(self, scores, batch, stage):
        """The YAML's ``compute_cost`` (cross-entropy) on the scenarios; outside training, the errors."""
        scenarios = batch.scenario_encoded.data.view(-1).to(self.device)
        loss = self.hparams.compute_cost(scores, scenarios)
        if stage != sb.Stage.TRAIN:
            self.error_metrics.append(batch.id, scores, scenarios)
        return loss

    def on_stage_start(self, stage, epoch=None):
        self.error_metrics = self.hparams.error_stats()
        super().on_stage_start(stage, epoch)

    def on_stage_end(self, stage, stage_loss, epoch=None):
        if stage == sb.Stage.TRAIN:
            self.finish_stage(stage, {"loss": stage_loss}, epoch)
            return
        error_rate = self.error_metrics.summarize("average")
        self.finish_stage(stage, {"loss": stage_loss, "accuracy": 1.0 - error_rate, "error_rate": error_rate}, epoch)


def dataio_prepare(hparams, manifests):
    """Train, devel and test sets giving ``sig`` and ``scenario_encoded`` (the class index)."""
    train_set, devel_set, test_set = audio_datasets(
        hparams, [manifests["train"], manifests["devel"], manifests["test"]]
    )
    label_encoder = load_classes(hparams, train_set, "scenario")

    @sb.utils.data_pipeline.takes("scenario")
    @sb.utils.data_pipeline.provides("scenario_encoded")
    def scenario_pipeline(scenario):
        return label_encoder.encode_label_torch(scenario)

    for dataset in (train_set, devel_set, test_set):
        dataset.add_dynamic_item(scenario_pipeline)
        dataset.set_output_keys(["id", "sig", "scenario_encoded"])
    return train_set, devel_set, test_set


if __name__ == "__main__":
    # Command line, DDP, the YAML (its num_classes prepares the manifests and counts their scenarios)
    hparams, run_opts = start_run(sys.argv[1:])
    manifests = run_on_main(hparams["prepare_slurp"])
    train_set, devel_set, test_set = dataio_prepare(hparams, manifests)

    brain = ScenarioBrain(hparams["modules"], hparams=hparams, run_opts=run_opts, checkpointer=hparams["checkpointer"])
    brain.write_results(brain.fit_and_test(train_set, devel_set, {"test": test_set}))
