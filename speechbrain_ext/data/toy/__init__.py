"""Deterministic toy corpora written in the real on-disk layouts of speech corpora.

The audio comes from our formant synthesizer (`speechbrain_ext.data.synth`), so tests and the
demo run offline on data that a recipe reads exactly as it reads the real corpus. One module
per corpus: `librispeech`, `voxceleb1`, `iemocap`, `slurp`, `commonvoice`; their public names
are re-exported here.
"""

from speechbrain_ext.data.toy.commonvoice import COMMONVOICE_TSV_HEADER, write_toy_commonvoice
from speechbrain_ext.data.toy.iemocap import TOY_EMOTION_PROSODY, write_toy_iemocap
from speechbrain_ext.data.toy.librispeech import LIBRISPEECH_SPLITS, write_toy_librispeech
from speechbrain_ext.data.toy.slurp import write_toy_slurp
from speechbrain_ext.data.toy.voxceleb1 import (
    VOXCELEB1_FIRST_TEST_ID,
    VOXCELEB1_NUM_TEST_IDS,
    write_toy_voxceleb1,
)

__all__ = [
    "COMMONVOICE_TSV_HEADER",
    "LIBRISPEECH_SPLITS",
    "TOY_EMOTION_PROSODY",
    "VOXCELEB1_FIRST_TEST_ID",
    "VOXCELEB1_NUM_TEST_IDS",
    "write_toy_commonvoice",
    "write_toy_iemocap",
    "write_toy_librispeech",
    "write_toy_slurp",
    "write_toy_voxceleb1",
]
