#!/usr/bin/env python3
"""MP3S CommonVoice with a linear + CTC head on a frozen BEST-RQ encoder.

    python train.py hparams/linear.yaml --ssl_folder=<pretraining output>/encoder --data_folder=<corpus>
"""

from speechbrain_ext.mp3s.tasks import main

if __name__ == "__main__":
    main("CommonVoice")
