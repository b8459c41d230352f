#!/usr/bin/env python3
"""MP3S IEMOCAP with an ECAPA-TDNN head on a frozen BEST-RQ encoder.

    python train.py hparams/ecapa_tdnn.yaml --ssl_folder=<pretraining output>/encoder --data_folder=<corpus>
"""

from speechbrain_ext.mp3s.tasks import main

if __name__ == "__main__":
    main("IEMOCAP")
