"""``python -m speechbrain_ext.bench``: see :mod:`speechbrain_ext.bench.speed_memory`."""

from speechbrain_ext.bench.speed_memory import main

if __name__ == "__main__":
    main()
