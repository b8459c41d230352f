"""BEST-RQ self-supervised pretraining (Chiu et al. 2022, https://arxiv.org/abs/2202.01855)."""

from speechbrain_ext.bestrq.masking import apply_mask_noise, compute_span_mask
from speechbrain_ext.bestrq.model import BestRQ, BestRQOutput, EncoderOutput, SpeechEncoder
from speechbrain_ext.bestrq.quantizer import RandomProjectionQuantizer

__all__ = [
    "BestRQ",
    "BestRQOutput",
    "EncoderOutput",
    "RandomProjectionQuantizer",
    "SpeechEncoder",
    "apply_mask_noise",
    "compute_span_mask",
]
