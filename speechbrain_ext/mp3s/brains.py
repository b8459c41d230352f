"""Training loops of the MP3S downstream tasks: CTC ASR, utterance classification, speaker verification.

All share MP3S's optimisation: Adam for the head, a separate Adam (higher rate) for the layer
weights, each annealed after validation as the task's MP3S ``train.py`` does (``anneal_on``:
NewBob on the validation loss for ASR, on the error rate for classification; a linear decay per
epoch for VoxCeleb1, whose layer-weight rate stays constant); the encoder stays frozen.
"""

from __future__ import annotations

import json
from pathlib import Path

import speechbrain as sb
import torch
import torch.nn.functional as F
from speechbrain.nnet.losses import AdditiveAngularMargin
from speechbrain.nnet.schedulers import update_learning_rate
from speechbrain.utils.logger import get_logger
from speechbrain.utils.metric_stats import EER, ErrorRateStats
from torch import nn

from speechbrain_ext.training import ResilientBrain

logger = get_logger(__name__)


class AngularMarginLoss(nn.Module):
    """Additive angular margin softmax (ArcFace) on cosine scores (B, C) and labels (B,)."""

    def __init__(self, margin: float = 0.2, scale: float = 30.0) -> None:
        super().__init__()
        self.margin = AdditiveAngularMargin(margin=margin, scale=scale)

    def forward(self, scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits = self.margin(scores, F.one_hot(labels, scores.shape[-1]).to(scores.dtype))
        return F.cross_entropy(logits, labels)


class DownstreamBrain(ResilientBrain):
    """A head trained on the weighted layers of a frozen encoder.

    modules: ``ssl`` (``WeightedEncoderFeatures``) and ``head``. hparams: ``model_opt_class``,
    ``weights_opt_class``, ``lr_annealing_model``, ``lr_annealing_weights``, ``train_logger``.
    Subclasses set ``error_key`` (the validation error that anneals the rates and picks the
    best checkpoint) and fill ``stage_metrics``.
    """

    error_key = "error"

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
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

    def features(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        wavs, wav_lens = batch.sig
        return self.modules.ssl(wavs.to(self.device), wav_lens.to(self.device))

    def stage_metrics(self, stage) -> dict:
        return {}

    def _anneal(self, scheduler, optimizer, stats: dict, epoch: int) -> float:
        """Steps ``scheduler`` (None: a constant rate) after validation; returns the rate it used."""
        current = optimizer.param_groups[0]["lr"]
        if scheduler is None:
            return current
        anneal_on = getattr(self.hparams, "anneal_on", "error")
        value = epoch if anneal_on == "epoch" else stats["loss" if anneal_on == "loss" else self.error_key]
        old, new = scheduler(value)
        update_learning_rate(optimizer, new)
        return old

    def on_stage_end(self, stage, stage_loss, epoch=None):
        stats = {"loss": stage_loss, **self.stage_metrics(stage)}
        if stage == sb.Stage.TRAIN:
            self.train_stats = stats
        elif stage == sb.Stage.VALID:
            error = stats[self.error_key]
            lr_model = self._anneal(self.hparams.lr_annealing_model, self.model_optimizer, stats, epoch)
            lr_weights = self._anneal(getattr(self.hparams, "lr_annealing_weights", None), self.weights_optimizer,
                                      stats, epoch)
            self.hparams.train_logger.log_stats(
                {"epoch": epoch, "lr_model": lr_model, "lr_weights": lr_weights},
                train_stats=self.train_stats,
                valid_stats=stats,
            )
            self.checkpointer.save_and_keep_only(meta={self.error_key: error}, min_keys=[self.error_key])
        else:
            self.test_stats = stats
            self.hparams.train_logger.log_stats(
                {"Epoch loaded": self.hparams.epoch_counter.current}, test_stats=stats
            )


class CTCBrain(DownstreamBrain):
    """CTC ASR on characters or BPE units: greedy decoding at validation, beam search at test; WER and CER.

    hparams: ``blank_index``, ``test_decoding`` ("beam", MP3S, or "greedy") and ``test_beam_search``
    (options of SpeechBrain's ``CTCBeamSearcher``). The task sets ``units``
    (:class:`~speechbrain_ext.mp3s.text.CharacterUnits` or ``SentencePieceUnits``) before training.
    """

    error_key = "WER"
    units = None

    def compute_forward(self, batch, stage):
        feats, lengths = self.features(batch)
        return self.modules.head(feats, lengths).log_softmax(dim=-1), lengths

    def compute_objectives(self, predictions, batch, stage):
        log_probs, lengths = predictions
        tokens, token_lens = batch.tokens
        tokens, token_lens = tokens.to(self.device), token_lens.to(self.device)
        loss = sb.nnet.losses.ctc_loss(log_probs, tokens, lengths, token_lens, blank_index=self.hparams.blank_index)
        if stage != sb.Stage.TRAIN:
            words = self.decoder(log_probs.detach().cpu(), lengths.cpu())
            targets = [text.split() for text in batch.wrd]
            self.wer.append(batch.id, words, targets)
            self.cer.append(batch.id, words, targets)
        return loss

    def on_stage_start(self, stage, epoch=None):
        from speechbrain_ext.mp3s.text import CTCDecoder

        self.wer = ErrorRateStats()
        self.cer = ErrorRateStats(split_tokens=True)
        beam = None
        if stage == sb.Stage.TEST and getattr(self.hparams, "test_decoding", "greedy") == "beam":
            beam = dict(self.hparams.test_beam_search)
        elif getattr(self.hparams, "test_decoding", "greedy") not in ("beam", "greedy"):
            raise ValueError(f"test_decoding must be 'beam' or 'greedy', got {self.hparams.test_decoding!r}")
        self.decoder = CTCDecoder(self.units, self.hparams.blank_index, beam)

    def stage_metrics(self, stage) -> dict:
        if stage == sb.Stage.TRAIN:
            return {}
        return {"WER": self.wer.summarize("error_rate"), "CER": self.cer.summarize("error_rate")}


class ClassificationBrain(DownstreamBrain):
    """One label per utterance (emotion, intent scenario, speaker): accuracy.

    hparams: ``compute_cost`` (cross-entropy or ``AngularMarginLoss``) on the head's scores.
    Batches carry ``label`` (B, 1) from a ``CategoricalEncoder``.
    """

    error_key = "error"

    def compute_forward(self, batch, stage):
        feats, lengths = self.features(batch)
        return self.modules.head(feats, lengths)

    def compute_objectives(self, scores, batch, stage):
        labels = batch.label.data.to(self.device).view(-1)
        if stage != sb.Stage.TRAIN:
            self.correct += int((scores.argmax(dim=-1) == labels).sum())
            self.total += labels.numel()
        return self.hparams.compute_cost(scores, labels)

    def on_stage_start(self, stage, epoch=None):
        self.correct, self.total = 0, 0

    def stage_metrics(self, stage) -> dict:
        if stage == sb.Stage.TRAIN:
            return {}
        accuracy = self.correct / max(self.total, 1)
        return {"accuracy": accuracy, "error": 1.0 - accuracy}


def random_crops(wavs: torch.Tensor, wav_lens: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One random window of ``size`` samples per utterance (shorter ones whole), as MP3S's ``random_chunk``.

    Example
    -------
    >>> crops, lens = random_crops(torch.arange(20.0).repeat(2, 1), torch.tensor([1.0, 0.2]), 6)
    >>> crops.shape, [round(x, 3) for x in lens.tolist()], crops[1, :4].tolist()
    (torch.Size([2, 6]), [1.0, 0.667], [0.0, 1.0, 2.0, 3.0])
    """
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


class VerificationBrain(ClassificationBrain):
    """Speaker classification training, then verification by cosine scoring of embeddings.

    With ``crop_seconds`` (MP3S: 3 s), training and validation batches are random windows of
    that length of each utterance; testing, embeddings and trials use whole utterances.
    """

    def compute_forward(self, batch, stage):
        wavs, wav_lens = batch.sig
        seconds = getattr(self.hparams, "crop_seconds", None)
        if seconds and stage != sb.Stage.TEST:
            wavs, wav_lens = random_crops(wavs, wav_lens, int(seconds * self.hparams.sample_rate))
        feats, lengths = self.modules.ssl(wavs.to(self.device), wav_lens.to(self.device))
        return self.modules.head(feats, lengths)

    @torch.no_grad()
    def embeddings(self, dataset, loader_kwargs: dict) -> dict[str, torch.Tensor]:
        """Normalised utterance embeddings of every item of ``dataset``, by ID."""
        self.modules.eval()
        # Brain.evaluate writes its checkpoint prefix into the options it is given: not a loader option.
        loader_kwargs = {key: value for key, value in loader_kwargs.items() if key != "ckpt_prefix"}
        loader = self.make_dataloader(dataset, sb.Stage.TEST, ckpt_prefix=None, **loader_kwargs)
        out = {}
        for batch in loader:
            if batch is None:  # every utterance of it failed to decode (logged)
                continue
            feats, lengths = self.features(batch)
            vectors = F.normalize(self.modules.head.embed(feats, lengths), dim=-1)
            out.update(zip(batch.id, vectors.cpu()))
        return out

    def verify(self, dataset, trials: list[tuple[int, str, str]], loader_kwargs: dict) -> float:
        """Equal error rate over ``trials`` (label, enrol ID, test ID) with cosine scores."""
        vectors = self.embeddings(dataset, loader_kwargs)
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
        return float(eer)


def write_results(path: str | Path, rows: list[dict]) -> Path:
    """Writes the task's results (one dict per metric) as JSON for the suite to collect."""
    path = Path(path)
    path.write_text(json.dumps(rows, indent=2) + "\n")
    logger.info("results written to %s", path)
    return path
