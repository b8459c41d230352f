"""speechbrain_ext: BEST-RQ pretraining with linear-complexity sequence mixers for SpeechBrain."""

__version__ = "0.1.0"
