#!/usr/bin/env python3
"""MP3S LibriSpeech ASR with a ContextNet + CTC head on a frozen BEST-RQ encoder.

    python train.py hparams/contextnet.yaml --ssl_folder=<pretraining output>/encoder --data_folder=/data/LibriSpeech
"""

from speechbrain_ext.mp3s.tasks import main

if __name__ == "__main__":
    main("LibriSpeech")
