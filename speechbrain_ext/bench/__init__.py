"""All benchmark code: speed and memory against input length (``python -m speechbrain_ext.bench``,
:mod:`~speechbrain_ext.bench.speed_memory`), its tables (:mod:`~speechbrain_ext.bench.report`), one mixer
layer on the CPU (:mod:`~speechbrain_ext.bench.cpu_mixers`) and Mamba's selective scan on the CPU
(:mod:`~speechbrain_ext.bench.scan_cpu`), Figure 1's protocol
(:mod:`~speechbrain_ext.bench.paper_protocol`), streaming's cost per chunk against stream length
(:mod:`~speechbrain_ext.bench.streaming`) and the MP3S suite on the toy corpora
(:mod:`~speechbrain_ext.bench.mp3s_toy`). docs/benchmarks.md describes them and their results."""
