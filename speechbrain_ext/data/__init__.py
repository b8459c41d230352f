"""Corpus preparations (SpeechBrain CSV manifests from each corpus's real layout), audio checks and
datasets; ``speechbrain_ext.data.toy`` writes toy corpora in the same layouts.

Example
-------
>>> from speechbrain_ext.data import prepare_librispeech, audio_dataset
"""

from speechbrain_ext.data.commonvoice import prepare_commonvoice
from speechbrain_ext.data.dataset import audio_dataset, read_manifests
from speechbrain_ext.data.iemocap import prepare_iemocap
from speechbrain_ext.data.librispeech import prepare_librispeech
from speechbrain_ext.data.slurp import prepare_slurp
from speechbrain_ext.data.voxceleb import prepare_voxceleb1

__all__ = [
    "audio_dataset",
    "prepare_commonvoice",
    "prepare_iemocap",
    "prepare_librispeech",
    "prepare_slurp",
    "prepare_voxceleb1",
    "read_manifests",
]
