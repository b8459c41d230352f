"""The paper's base and large models in one table (Whetten et al. 2024).

Read by the tests of the shipped YAMLs (``recipes/LibriSpeech/BEST-RQ/hparams/{base,large}``),
by ``SpeechEncoder.paper``, ``speechbrain_ext.bench`` and docs/fidelity.md. Widths equalise
parameters across mixers; the totals are those of the experiment code (front-end + encoder + the
8192-way head), measured from whettenr/brq-att-alt-exp ``hparams/*.yaml`` on whettenr/speechbrain-fork.

Example
-------
>>> SIZES["large"].layers, SIZES["large"].widths["mamba"]
(24, 678)
>>> sorted(paper_encoder_settings("base", "fastformer")["mixer_kwargs"])
['dropout', 'init', 'scoring', 'share_query_value']
"""

from dataclasses import dataclass

D_FFN = 2048
NHEAD = 8
CODEBOOK_SIZE = 8192
DROPOUT = 0.1
# The paper's five mixers; mhsa_flash is ours (SDPA kernels, rotary positions), widened to mhsa's budget.
PAPER_MIXERS = ("mhsa", "hypermixing", "fastformer", "summarymixing", "mamba")
# Models a run script trained beside its YAML's: name -> (mixer, the settings that differ).
# summarymixing_1head: run/run_summix.sh and run_summix_lg.sh (--nhead 1 --d_model 536 / 848).
VARIANTS = {"summarymixing_1head": ("summarymixing", {"nhead": 1})}


@dataclass(frozen=True)
class Size:
    """Depth, LayerDrop, width per mixer and the experiment code's parameter totals of one model size."""

    layers: int
    layerdrop: float
    widths: dict
    paper_parameters: dict


SIZES = {
    "base": Size(
        layers=12,
        layerdrop=0.05,
        widths={"mhsa": 576, "mhsa_flash": 592, "hypermixing": 672, "fastformer": 616, "summarymixing": 632,
                "summarymixing_1head": 536, "mamba": 474},
        paper_parameters={"mhsa": 94.03e6, "hypermixing": 94.32e6, "fastformer": 93.93e6,
                          "summarymixing": 94.133e6, "summarymixing_1head": 94.606e6, "mamba": 94.23e6},
    ),
    "large": Size(
        layers=24,
        layerdrop=0.1,
        widths={"mhsa": 848, "mhsa_flash": 880, "hypermixing": 1048, "fastformer": 920, "summarymixing": 976,
                "summarymixing_1head": 848, "mamba": 678},
        paper_parameters={"mhsa": 313.50e6, "hypermixing": 315.44e6, "fastformer": 312.55e6,
                          "summarymixing": 313.706e6, "summarymixing_1head": 313.371e6, "mamba": 314.92e6},
    ),
}


def paper_mixer_kwargs(mixer: str, d_model: int) -> dict:
    """The mixer settings of the paper's code (the values the shipped YAMLs set)."""
    settings = {
        "mhsa": {"dropout": DROPOUT},  # RelPosMHAXL(dropout=dropout)
        "mhsa_flash": {},
        "hypermixing": {"hypernet_size": D_FFN},  # HyperMixing(hypernet_size=d_ffn, tied=False)
        "fastformer": {"share_query_value": True, "scoring": "linear", "dropout": DROPOUT, "init": "normal"},
        "summarymixing": {"mode": "full", "combine": "concat", "local_hidden": 512, "local_out": 512,
                          "summary_hidden": 1024, "summary_out": d_model, "block_diagonal": True,
                          "norm": True, "activation": "swish"},
        "mamba": {"d_state": 16, "d_conv": 4, "expand": 2, "prenorm_residual": True},
    }
    if mixer not in settings:
        raise ValueError(f"no paper settings for mixer {mixer!r}; valid: {', '.join(settings)}")
    return settings[mixer]


def paper_encoder_settings(size: str, mixer: str) -> dict:
    """Keyword arguments of ``SpeechEncoder`` for the paper's model ``size`` with ``mixer`` (a mixer of
    the table, or a name of ``VARIANTS``)."""
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; valid: {', '.join(SIZES)}")
    table = SIZES[size]
    if mixer not in table.widths:
        raise ValueError(f"no {size} width for mixer {mixer!r}; valid: {', '.join(table.widths)}")
    d_model = table.widths[mixer]
    mixer, variant = VARIANTS.get(mixer, (mixer, {}))
    return {
        "mixer": mixer,
        "num_layers": table.layers,
        "d_model": d_model,
        "d_ffn": D_FFN,
        "nhead": variant.get("nhead", NHEAD),
        "mixer_kwargs": paper_mixer_kwargs(mixer, d_model),
        "dropout": DROPOUT,
        "layerdrop_prob": table.layerdrop,
        "activation": "swish",
        "input_dropout": DROPOUT,
        # TransformerASR.encode adds the sinusoid for every attention type but these two.
        "input_positions": None if mixer in ("mhsa", "hypermixing", "mhsa_flash") else "absolute",
        "mixer_output_dropout": False,
        "final_norm_eps": 1e-6,
        "init": "xavier_normal",
        "normalization": "global",
        "normalization_until_epoch": 4,
    }
