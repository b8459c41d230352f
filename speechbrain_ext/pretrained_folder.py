"""What makes an exported encoder folder a SpeechBrain pretrained model: ``hyperparams.yaml`` for
``from_hparams`` and a model card (``README.md``) that says what the encoder is and how it was made."""

from __future__ import annotations

import json
import platform
from importlib import metadata
from pathlib import Path
from typing import Any, Optional

from speechbrain_ext.files import atomic_writer

HPARAMS_FILE = "hyperparams.yaml"
CARD_FILE = "README.md"
CARD_FIELDS = {
    "optimizer_steps": "optimizer steps",
    "hours": "hours of training audio (one epoch)",
    "epochs": "epochs",
    "masked_accuracy": "final masked accuracy (validation)",
    "command": "command",
}


def package_versions() -> dict[str, str]:
    """Versions of the packages an encoder depends on, for the model card."""
    versions = {"python": platform.python_version()}
    for name in ("speechbrain_ext", "speechbrain", "torch", "torchaudio", "mamba-ssm"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            if name == "speechbrain_ext":
                import speechbrain_ext

                versions[name] = speechbrain_ext.__version__ + " (source tree)"
    return versions


def write_hyperparams(folder: Path, config: dict, weights_file: str) -> None:
    """``hyperparams.yaml``: rebuilds the encoder from its settings and loads ``weights_file``
    (strictly, ``weights_only=True``) through SpeechBrain's Pretrainer.

    The Pretrainer is given no path: it then reads ``<loadable>.ckpt`` from the folder ``from_hparams``
    loads (a bare file name would be read from the working directory instead).
    """
    if weights_file != "encoder.ckpt":
        raise ValueError(f"the Pretrainer reads the loadable 'encoder' from encoder.ckpt, not {weights_file}")
    settings = json.dumps(config)  # JSON is YAML: one line that hyperpyyaml reads back as the same dict
    text = f"""# Written by speechbrain_ext when the encoder was exported. Load with
#   from speechbrain_ext.inference import MixerEncoder
#   encoder = MixerEncoder.from_hparams(source="<this folder>")
sample_rate: {int(config.get("sample_rate", 16000))}
encoder_config: {settings}

encoder: !apply:speechbrain_ext.inference.build_encoder
    config: !ref <encoder_config>

modules:
    encoder: !ref <encoder>

pretrainer: !new:speechbrain.utils.parameter_transfer.Pretrainer
    loadables:
        encoder: !ref <encoder>
    custom_hooks:
        encoder: !name:speechbrain_ext.inference.load_encoder_weights
"""
    with atomic_writer(folder / HPARAMS_FILE) as handle:
        handle.write(text)


def check_settings_agree(folder: Path, settings: dict) -> None:
    """A clear error when the folder's ``hyperparams.yaml`` builds another encoder than ``settings``
    (those of ``encoder_config.json``): the two loaders would otherwise build two different models."""
    path = Path(folder) / HPARAMS_FILE
    if not path.is_file():
        return
    prefix = "encoder_config: "  # write_hyperparams writes the settings as one line of JSON
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.startswith(prefix)]
    try:
        written = json.loads(lines[0][len(prefix):])
    except (IndexError, json.JSONDecodeError):
        raise ValueError(f"{path} has no one-line JSON encoder_config: it is not the hyperparams.yaml of an "
                         "exported encoder (SpeechEncoder.save_pretrained writes one)") from None
    differing = sorted(key for key in set(written) | set(settings) if written.get(key) != settings.get(key))
    if differing:
        details = "; ".join(f"{key}: {written.get(key)!r} in {HPARAMS_FILE}, {settings.get(key)!r} in the "
                            f"settings file" for key in differing)
        raise ValueError(f"{folder}: {HPARAMS_FILE} and encoder_config.json describe different encoders ({details}); "
                         "re-export the encoder (SpeechEncoder.save_pretrained) or correct one of them")


def write_model_card(folder: Path, config: dict, num_parameters: int, card: Optional[dict[str, Any]] = None) -> None:
    """``README.md``: mixer, sizes, parameters, training facts (those known) and package versions."""
    card = dict(card or {})
    lines = [
        f"# speechbrain_ext encoder: {config['mixer']} Conformer",
        "",
        "BEST-RQ-pretrained speech encoder (fbank, normalisation, CNN front-end, Conformer whose "
        f"self-attention is `{config['mixer']}`), exported by speechbrain_ext.",
        "",
        "```python",
        "from speechbrain_ext.inference import MixerEncoder",
        'encoder = MixerEncoder.from_hparams(source="<this folder>")',
        'features = encoder.encode_file("speech.wav")            # (1, T, E), any rate / channels',
        'layers = encoder.encode_file("speech.wav", output="all")  # (L, 1, T, E)',
        "```",
        "",
        "| | |",
        "|---|---|",
        f"| mixer | `{config['mixer']}` |",
        f"| layers | {config['num_layers']} |",
        f"| d_model | {config['d_model']} |",
        f"| d_ffn | {config['d_ffn']} |",
        f"| heads | {config['nhead']} |",
        f"| parameters | {num_parameters:,} ({num_parameters / 1e6:.2f}M) |",
    ]
    for key, label in CARD_FIELDS.items():
        value = card.pop(key, None)
        if value is None:
            value = "unknown"
        elif key == "command":
            value = f"`{value}`"
        elif isinstance(value, float):
            value = f"{value:.4g}"
        lines.append(f"| {label} | {value} |")
    for key, value in card.items():
        lines.append(f"| {key} | {value} |")
    lines += ["", "Package versions at export:", ""]
    lines += [f"- {name} {version}" for name, version in package_versions().items()]
    lines += ["", "Every setting of the encoder (`encoder_config.json`):", "", "```json",
              json.dumps(config, indent=2), "```", ""]
    with atomic_writer(folder / CARD_FILE) as handle:
        handle.write("\n".join(lines))
