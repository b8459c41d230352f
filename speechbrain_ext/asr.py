"""CTC recognizers on a pretrained encoder: what fine-tuning and the transcriber share.

The head is the one of the paper's fine-tuning code (whettenr/brq-att-alt-exp ``finetune/ft_brq.yaml``):
blocks of Linear(1280), LayerNorm, LeakyReLU (dropout 0.15 after the first two), then a Linear to the
characters. :func:`load_encoder_for_finetuning` loads an exported encoder and refuses one that is not the
YAML's; :func:`encoder_features` is the head's input, computed the same way in training, in the recipe's
decoding and in :class:`speechbrain_ext.inference.MixerASR`; :func:`export_recognizer` writes the fine-tuned
model as a SpeechBrain pretrained folder that ``MixerASR.from_hparams`` loads.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from speechbrain_ext.files import atomic_writer
from speechbrain_ext.models.speech_encoder import CONFIG_FILE, WEIGHTS_FILE, EncoderOutput, SpeechEncoder
from speechbrain_ext.mp3s.frozen_encoder import WeightedLayerSum
from speechbrain_ext.pretrained_folder import CARD_FILE, HPARAMS_FILE, package_versions

LAYER_OUTPUTS = ("last", "weighted")
HEAD_FILE = "head.ckpt"
TOKENIZER_FILE = "tokenizer.ckpt"
LAYER_WEIGHTS_FILE = "layer_weights.ckpt"
HEAD_CONFIG_FILE = "head_config.json"


class CTCHead(nn.Module):
    """The fine-tuning head of the paper's code: ``num_blocks`` x (Linear, LayerNorm, LeakyReLU, Dropout), then
    a Linear to ``num_outputs`` logits.

    Arguments
    ---------
    input_dim : int
        Width of the encoder frames E.
    num_outputs : int
        CTC outputs (the paper: 29 characters with the blank at 0).
    hidden_dim : int
        Width of the blocks (the paper: 1280).
    num_blocks : int
        Number of blocks (the paper: 3).
    dropout : float
        Dropout of the blocks (the paper: 0.15).
    dropout_last_block : bool
        Dropout after the last block too (the paper's ``back_end_ffn`` has none there).

    Example
    -------
    >>> head = CTCHead(32, num_outputs=29, hidden_dim=64)
    >>> head(torch.randn(2, 10, 32)).shape
    torch.Size([2, 10, 29])
    """

    def __init__(self, input_dim: int, num_outputs: int = 29, hidden_dim: int = 1280, num_blocks: int = 3,
                 dropout: float = 0.15, dropout_last_block: bool = False) -> None:
        super().__init__()
        self.config = {"input_dim": input_dim, "num_outputs": num_outputs, "hidden_dim": hidden_dim,
                       "num_blocks": num_blocks, "dropout": dropout, "dropout_last_block": dropout_last_block}
        layers: list[nn.Module] = []
        for block in range(num_blocks):
            layers += [nn.Linear(input_dim if block == 0 else hidden_dim, hidden_dim), nn.LayerNorm(hidden_dim),
                       nn.LeakyReLU()]
            if block < num_blocks - 1 or dropout_last_block:
                layers.append(nn.Dropout(dropout))
        self.blocks = nn.Sequential(*layers)
        self.output = nn.Linear(hidden_dim if num_blocks else input_dim, num_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, E) -> logits (B, T, num_outputs)."""
        return self.output(self.blocks(x))


def load_encoder_for_finetuning(folder: str | Path, mixer: str, d_model: int, layerdrop_prob: float = 0.0,
                                freeze_cnn: bool = False) -> SpeechEncoder:
    """The encoder exported to ``folder``, to be fine-tuned as the YAML says; one clear ValueError when the folder
    holds another mixer or width than the YAML's ``mixer`` and ``d_model`` (before any data work).

    Its global normalisation statistics stay those of pretraining. ``layerdrop_prob`` replaces pretraining's
    (the paper fine-tunes without LayerDrop); ``freeze_cnn`` keeps the CNN front-end's weights fixed.
    """
    config = SpeechEncoder.read_config(folder)
    differ = [f"{key} {config[key]!r} (the YAML: {wanted!r})"
              for key, wanted in (("mixer", mixer), ("d_model", d_model)) if config[key] != wanted]
    if differ:
        raise ValueError(
            f"the encoder folder {folder} does not match the YAML: it holds {', '.join(differ)}. Give the YAML of "
            f"its mixer (hparams/{config['mixer']}.yaml) with --d_model={config['d_model']}, or another "
            "--encoder_folder"
        )
    encoder = SpeechEncoder.from_pretrained(folder)
    encoder.encoder.layerdrop_prob = layerdrop_prob
    if freeze_cnn:
        encoder.front_end.requires_grad_(False)
    return encoder


def layer_weights_for(layer_output: str, encoder: SpeechEncoder) -> WeightedLayerSum | None:
    """What feeds the head: None for ``"last"`` (the encoder output after its final norm, the paper), learned
    weights of every hidden state for ``"weighted"`` (MP3S's weighted sum)."""
    if layer_output not in LAYER_OUTPUTS:
        raise ValueError(f"layer_output must be one of {', '.join(LAYER_OUTPUTS)}, got {layer_output!r}")
    return WeightedLayerSum(encoder.config["num_layers"] + 1) if layer_output == "weighted" else None


def encoder_parameter_groups(encoder: SpeechEncoder, layerwise_decay: float = 1.0) -> list[dict]:
    """The encoder's trainable parameters as optimizer groups with an ``lr_scale`` each.

    ``layerwise_decay`` 1.0 gives one group (the paper); below 1, the top block has scale 1, each block below
    ``layerwise_decay`` times the one above, and the CNN front-end and projection that of a block under the
    first; the final norm and anything else the top's.
    """
    if not 0.0 < layerwise_decay <= 1.0:
        raise ValueError(f"layerwise_lr_decay must be in (0, 1], got {layerwise_decay}")
    trainable = [(name, p) for name, p in encoder.named_parameters() if p.requires_grad]
    if layerwise_decay == 1.0:
        return [{"params": [p for _, p in trainable], "lr_scale": 1.0}]
    num_blocks = len(encoder.encoder.layers)
    depths: dict[int, list] = {}
    for name, parameter in trainable:
        if name.startswith(("front_end.", "projection.")):
            depth = 0
        elif name.startswith("encoder.layers."):
            depth = int(name.split(".")[2]) + 1
        else:
            depth = num_blocks
        depths.setdefault(depth, []).append(parameter)
    return [{"params": params, "lr_scale": layerwise_decay ** (num_blocks - depth)}
            for depth, params in sorted(depths.items())]


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Sets every group's rate to ``lr`` times its ``lr_scale`` (1 if it has none)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


def encoder_features(encoder: SpeechEncoder, wavs: torch.Tensor, wav_lens: torch.Tensor,
                     layer_weights: WeightedLayerSum | None = None,
                     grad: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """The head's input (B, T, E) from waveforms (B, S) with relative lengths (B,), and the frames' relative
    lengths (B,).

    Without ``layer_weights``: the encoder output after its final norm (the paper); with them, their weighted
    sum of every hidden state (MP3S's). ``grad`` False runs the encoder without gradients (a frozen encoder;
    the layer weights still learn).
    """
    with torch.set_grad_enabled(torch.is_grad_enabled() and grad):
        encoded: EncoderOutput = encoder(wavs, wav_lens, output_hidden_states=layer_weights is not None)
    feats = encoded.out if layer_weights is None else layer_weights(torch.stack(encoded.hidden))
    padding = encoded.padding_mask
    lengths = (~padding).sum(dim=1).to(feats.dtype) / padding.shape[1]
    return feats, lengths


def read_head_config(folder: str | Path) -> dict:
    """The head settings of an exported recognizer folder."""
    return json.loads((Path(folder) / HEAD_CONFIG_FILE).read_text())


def export_recognizer(folder: str | Path, encoder: SpeechEncoder, head: CTCHead, tokenizer,
                      layer_weights: WeightedLayerSum | None = None, blank_index: int = 0,
                      card: dict | None = None) -> Path:
    """Writes a fine-tuned recognizer into ``folder`` as a SpeechBrain pretrained folder.

    ``encoder.ckpt`` and ``encoder_config.json`` (as an exported encoder: ``MixerEncoder`` loads them too),
    ``head.ckpt`` and ``head_config.json``, ``tokenizer.ckpt`` (the characters, a ``CTCTextEncoder``),
    ``layer_weights.ckpt`` with a weighted layer sum, ``hyperparams.yaml`` for
    :class:`speechbrain_ext.inference.MixerASR` and a model card ``README.md`` (``card``: error rates, training
    facts). Pair it with :func:`speechbrain_ext.files.atomic_folder` to replace a folder whole.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    # The encoder's settings as fine-tuned, with the pretraining LayerDrop it was loaded with replaced.
    config = dict(encoder.config, layerdrop_prob=encoder.encoder.layerdrop_prob)
    saved = [(WEIGHTS_FILE, encoder.state_dict()), (HEAD_FILE, head.state_dict())]
    if layer_weights is not None:
        saved.append((LAYER_WEIGHTS_FILE, layer_weights.state_dict()))
    for name, state in saved:
        with atomic_writer(folder / name, binary=True) as handle:
            torch.save({key: value.detach().cpu() for key, value in state.items()}, handle)
    with atomic_writer(folder / CONFIG_FILE) as handle:
        handle.write(json.dumps(config, indent=2) + "\n")
    with atomic_writer(folder / HEAD_CONFIG_FILE) as handle:
        handle.write(json.dumps(head.config, indent=2) + "\n")
    tokenizer.save(folder / TOKENIZER_FILE)
    _write_recognizer_hyperparams(folder, config, head.config, layer_weights is not None, blank_index)
    _write_recognizer_card(folder, config, encoder, head, layer_weights, card)
    return folder


def _write_recognizer_hyperparams(folder: Path, encoder_config: dict, head_config: dict, weighted: bool,
                                  blank_index: int) -> None:
    """``hyperparams.yaml`` of an exported recognizer. The Pretrainer is given no paths: it reads
    ``<loadable>.ckpt`` from the folder ``from_hparams`` loads, never from the working directory."""
    num_hidden = encoder_config["num_layers"] + 1
    layer_weights = f"""
layer_weights: !new:speechbrain_ext.mp3s.frozen_encoder.WeightedLayerSum
    num_layers: {num_hidden}
""" if weighted else "\nlayer_weights: null\n"
    text = f"""# Written by speechbrain_ext when the recognizer was exported. Load with
#   from speechbrain_ext.inference import MixerASR
#   asr = MixerASR.from_hparams(source="<this folder>")
sample_rate: {int(encoder_config.get("sample_rate", 16000))}
blank_index: {int(blank_index)}
encoder_config: {json.dumps(encoder_config)}
head_config: {json.dumps(head_config)}

encoder: !apply:speechbrain_ext.inference.build_encoder
    config: !ref <encoder_config>
head: !apply:speechbrain_ext.inference.build_head
    config: !ref <head_config>
{layer_weights}
tokenizer: !new:speechbrain.dataio.encoder.CTCTextEncoder

modules:
    encoder: !ref <encoder>
    head: !ref <head>
{"    layer_weights: !ref <layer_weights>" if weighted else ""}

pretrainer: !new:speechbrain.utils.parameter_transfer.Pretrainer
    loadables:
        encoder: !ref <encoder>
        head: !ref <head>
        tokenizer: !ref <tokenizer>
{"        layer_weights: !ref <layer_weights>" if weighted else ""}
    custom_hooks:
        encoder: !name:speechbrain_ext.inference.load_encoder_weights
        head: !name:speechbrain_ext.inference.load_module_weights
        tokenizer: !name:speechbrain_ext.inference.load_tokenizer
{"        layer_weights: !name:speechbrain_ext.inference.load_module_weights" if weighted else ""}
"""
    with atomic_writer(folder / HPARAMS_FILE) as handle:
        handle.write(text)


def _write_recognizer_card(folder: Path, config: dict, encoder: SpeechEncoder, head: CTCHead,
                           layer_weights: WeightedLayerSum | None, card: dict | None) -> None:
    """``README.md``: what the recognizer is, how to load it, its error rates and how it was made."""
    card = dict(card or {})
    parameters = sum(p.numel() for module in (encoder, head, layer_weights) if module is not None
                     for p in module.parameters())
    error_rates = card.pop("error_rates", {})
    lines = [
        f"# speechbrain_ext recognizer: {config['mixer']} Conformer, CTC on characters",
        "",
        f"A BEST-RQ-pretrained encoder (self-attention replaced by `{config['mixer']}`) fine-tuned with CTC on "
        "characters by speechbrain_ext (recipes/LibriSpeech/CTC).",
        "",
        "```python",
        "from speechbrain_ext.inference import MixerASR",
        'asr = MixerASR.from_hparams(source="<this folder>")',
        'text = asr.transcribe_file("speech.wav")    # any rate / channels',
        "```",
        "",
        "| | |",
        "|---|---|",
        f"| mixer | `{config['mixer']}` |",
        f"| layers | {config['num_layers']} |",
        f"| d_model | {config['d_model']} |",
        f"| head | {head.config['num_blocks']} x {head.config['hidden_dim']}, {head.config['num_outputs']} outputs |",
        f"| encoder output | {'weighted sum of every layer' if layer_weights is not None else 'last layer'} |",
        f"| parameters | {parameters:,} ({parameters / 1e6:.2f}M) |",
    ]
    for key, value in card.items():
        lines.append(f"| {key.replace('_', ' ')} | {f'`{value}`' if key == 'command' else value} |")
    if error_rates:
        lines += ["", "Error rates (%) of the checkpoint exported:", "", "| test set | decoding | WER | CER |",
                  "|---|---|---|---|"]
        for (test_set, decoding), rates in error_rates.items():
            lines.append(f"| {test_set} | {decoding} | {rates['WER']:.2f} | {rates['CER']:.2f} |")
    lines += ["", "Package versions at export:", ""]
    lines += [f"- {name} {version}" for name, version in package_versions().items()]
    lines.append("")
    with atomic_writer(folder / CARD_FILE) as handle:
        handle.write("\n".join(lines))
