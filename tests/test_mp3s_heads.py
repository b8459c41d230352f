"""Every MP3S recipe's head, for any encoder width E, has the parameters of the benchmark's configuration.

The reference counts are written out from the layer lists of speechbrain/benchmarks
``benchmarks/MP3S/<Task>/<head>/hparams/ssl.yaml`` (cited per case); the few large SpeechBrain
blocks (ContextNet, ECAPA-TDNN, x-vector) are built with the arguments that file gives them.
"""

import pytest
import torch
from hyperpyyaml import load_hyperpyyaml

from speechbrain_ext.models.speech_encoder import SpeechEncoder
from speechbrain_ext.mp3s.heads import FrameHead, PooledHead, takes_lengths, valid_mask
from speechbrain_ext.mp3s.suite import RECIPES


def n_params(module) -> int:
    return sum(p.numel() for p in module.parameters())


def linear(n_in: int, n_out: int, bias: bool = True) -> int:
    return n_in * n_out + (n_out if bias else 0)


def lstm(n_in: int, hidden: int, layers: int, bidirectional: bool = True) -> int:
    """torch.nn.LSTM (SpeechBrain's LSTM wraps it): 4 gates, input and hidden weights, two biases."""
    directions = 2 if bidirectional else 1
    total = 0
    for layer in range(layers):
        width = n_in if layer == 0 else hidden * directions
        total += directions * (4 * hidden * width + 4 * hidden * hidden + 8 * hidden)
    return total


def ecapa(E: int, lin_neurons: int) -> int:
    from speechbrain.lobes.models.ECAPA_TDNN import ECAPA_TDNN

    return n_params(ECAPA_TDNN(E, channels=[512, 512, 512, 512, 1536], kernel_sizes=[5, 3, 3, 3, 1],
                               dilations=[1, 2, 3, 4, 1], groups=[1, 1, 1, 1, 1], attention_channels=64,
                               lin_neurons=lin_neurons))


def ecapa_classifier(n_in: int, classes: int) -> int:
    from speechbrain.lobes.models.ECAPA_TDNN import Classifier

    return n_params(Classifier(n_in, out_neurons=classes))


def mp3s_head_params(task: str, head: str, E: int, C: int) -> int:
    """Parameters of the MP3S head (everything but the SSL model and its layer weights)."""
    if (task, head) == ("LibriSpeech", "LSTM"):
        # LibriSpeech/LSTM/hparams/ssl.yaml: enc LSTM(E, 1024, 2 layers, bidirectional); ctc_lin Linear(2048, 30)
        return lstm(E, 1024, 2) + linear(2048, 30)
    if (task, head) == ("LibriSpeech", "contextnet"):
        # LibriSpeech/contextnet/hparams/ssl.yaml: enc ContextNet(input E, strides [1] * 21); ctc_lin Linear(640, 30)
        from speechbrain.lobes.models.ContextNet import ContextNet

        return n_params(ContextNet(input_shape=[None, None, E], strides=[1] * 21)) + linear(640, 30)
    if (task, head) == ("CommonVoice", "LSTM"):
        # CommonVoice/LSTM/hparams/ssl.yaml: LSTM(E, 1024, 2 layers, bidirectional); Linear(2048, 100 BPE units)
        return lstm(E, 1024, 2) + linear(2048, 100)
    if (task, head) == ("CommonVoice", "linear"):
        # CommonVoice/linear/hparams/ssl.yaml: VanillaNN(E -> 1024, 1 block, Sigmoid); ctc_lin Linear(1024, 100)
        return linear(E, 1024) + linear(1024, 100)
    if (task, head) == ("VoxCeleb1", "ecapa_tdnn"):
        # VoxCeleb1/ecapa_tdnn/hparams/ssl.yaml: ECAPA_TDNN(E, ..., lin_neurons 512); Classifier(512, speakers)
        return ecapa(E, 512) + ecapa_classifier(512, C)
    if (task, head) == ("VoxCeleb1", "Xvectors"):
        # VoxCeleb1/Xvectors/hparams/ssl.yaml: Xvector(E, 5 TDNN blocks [512 x 4, 1500], kernels [5, 3, 3, 1, 1],
        # dilations [1, 2, 3, 1, 1], lin_neurons 512); Xvector Classifier([., ., 512], 1 block of 512, speakers)
        from speechbrain.lobes.models.Xvector import Classifier, Xvector

        xvector = Xvector(in_channels=E, activation=torch.nn.LeakyReLU, tdnn_blocks=5,
                          tdnn_channels=[512, 512, 512, 512, 1500], tdnn_kernel_sizes=[5, 3, 3, 1, 1],
                          tdnn_dilations=[1, 2, 3, 1, 1], lin_neurons=512)
        classifier = Classifier(input_shape=[None, None, 512], activation=torch.nn.LeakyReLU, lin_blocks=1,
                                lin_neurons=512, out_neurons=C)
        return n_params(xvector) + n_params(classifier)
    if (task, head) == ("IEMOCAP", "linear"):
        # IEMOCAP/linear/hparams/ssl.yaml: StatisticsPooling(return_std False); output_mlp Linear(E, 4, bias False)
        return linear(E, C, bias=False)
    if (task, head) == ("IEMOCAP", "ecapa_tdnn"):
        # IEMOCAP/ecapa_tdnn/hparams/ssl.yaml: ECAPA_TDNN(E, ..., lin_neurons 96); Classifier(96, 4)
        return ecapa(E, 96) + ecapa_classifier(96, C)
    if (task, head) == ("SLURP", "linear"):
        # SLURP/linear/hparams/ssl.yaml: StatisticsPooling(return_std False); output_mlp Linear(E, 18, bias False)
        return linear(E, C, bias=False)
    if (task, head) == ("SLURP", "LSTM_linear"):
        # SLURP/LSTM_linear/hparams/ssl.yaml: enc Sequential(LSTM(E, hidden E, 2 layers, bidirectional),
        # Linear(2E, E)); StatisticsPooling(return_std False); output_mlp Linear(E, 18, bias False)
        return lstm(E, E, 2) + linear(2 * E, E) + linear(E, C, bias=False)
    raise KeyError((task, head))


CLASSES = {"VoxCeleb1": 1211, "IEMOCAP": 4, "SLURP": 18}


@pytest.fixture(scope="module")
def encoders(tmp_path_factory):
    """Exported encoders of two widths (the heads must follow E)."""
    folders = {}
    for width in (48, 72):
        folder = tmp_path_factory.mktemp(f"enc{width}")
        SpeechEncoder("fastformer", num_layers=1, d_model=width, d_ffn=32, nhead=4).save_pretrained(folder)
        folders[width] = folder
    return folders


def load_recipe(recipe, folder, tmp_path, extra: dict | None = None, profile: str = "paper") -> dict:
    overrides = {"ssl_folder": str(folder), "data_folder": str(tmp_path), "output_folder": str(tmp_path / "out"),
                 **({"num_classes": CLASSES[recipe.task]} if recipe.task in CLASSES else {}), **(extra or {})}
    with open(recipe.hparams(profile), encoding="utf-8") as fin:
        return load_hyperpyyaml(fin, overrides)


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda r: f"{r.task}-{r.head}")
def test_head_has_the_parameters_of_the_mp3s_configuration(recipe, encoders, tmp_path):
    widths = (48, 72) if recipe.head in ("linear", "LSTM_linear") else (48,)  # the large heads at one width
    for width in widths:
        hparams = load_recipe(recipe, encoders[width], tmp_path)
        C = CLASSES.get(recipe.task, 0)
        assert n_params(hparams["head"]) == mp3s_head_params(recipe.task, recipe.head, width, C), width


MP3S_TRAINING = {
    # (task, head): (epochs, batch size, head lr, head annealing factor or "linear", annealed on, shuffle)
    # from each benchmarks/MP3S/<Task>/<head>/hparams/ssl.yaml and train.py
    ("LibriSpeech", "LSTM"): (20, 4, 2e-4, 0.8, "loss", False),
    ("LibriSpeech", "contextnet"): (2, 4, 2e-4, 0.8, "loss", False),
    ("CommonVoice", "LSTM"): (20, 4, 2e-4, 0.8, "loss", False),
    ("CommonVoice", "linear"): (20, 4, 2e-4, 0.8, "loss", False),
    ("VoxCeleb1", "ecapa_tdnn"): (15, 8, 1e-3, "linear", "epoch", True),
    ("VoxCeleb1", "Xvectors"): (15, 8, 1e-3, "linear", "epoch", True),
    ("IEMOCAP", "linear"): (30, 2, 2e-4, 0.9, "error", True),
    ("IEMOCAP", "ecapa_tdnn"): (30, 2, 2e-4, 0.9, "error", True),
    ("SLURP", "linear"): (20, 2, 2e-4, 0.8, "error", True),
    ("SLURP", "LSTM_linear"): (20, 2, 2e-4, 0.8, "error", True),
}


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda r: f"{r.task}-{r.head}")
def test_mp3s_profile_trains_as_upstream_mp3s(recipe, encoders, tmp_path):
    from speechbrain.nnet.schedulers import LinearScheduler

    small = {"hidden_size": 8, "contextnet_channels": 8, "contextnet_blocks": 2,
             "ecapa_channels": [8, 8, 8, 8, 24], "embedding_dim": 8, "dnn_neurons": 8}
    text = recipe.hparams("mp3s").read_text()
    hp = load_recipe(recipe, encoders[48], tmp_path, {k: v for k, v in small.items() if f"\n{k}:" in text}, "mp3s")
    epochs, batch, lr, factor, anneal_on, shuffle = MP3S_TRAINING[recipe.task, recipe.head]
    assert hp["number_of_epochs"] == epochs and hp["batch_size"] == batch and hp["lr"] == lr
    assert hp["lr_weights"] == 0.01 and hp["anneal_on"] == anneal_on
    assert bool(hp["train_dataloader_opts"].get("shuffle", False)) == shuffle
    assert hp["sorting"] == ("random" if shuffle else "ascending")
    if factor == "linear":
        assert isinstance(hp["lr_annealing_model"], LinearScheduler) and hp["lr_annealing_weights"] is None
        assert hp["lr_final"] == 1e-4 and hp["model_opt_class"].keywords["weight_decay"] == 2e-6
        assert hp["crop_seconds"] == 3.0 and hp["valid_ratio"] == 0.1
    else:
        assert hp["lr_annealing_model"].annealing_factor == factor
        assert hp["lr_annealing_weights"].annealing_factor == 0.9
    if recipe.task in ("LibriSpeech", "CommonVoice"):
        assert hp["test_decoding"] == "beam"
        assert hp["test_beam_search"] == {"beam_size": 143, "topk": 1, "beam_prune_logp": -12.0,
                                          "token_prune_min_logp": -1.2, "prune_history": True, "alpha": 0.8,
                                          "beta": 1.2, "kenlm_model_path": None}
        assert hp["max_duration"] == (10.0 if recipe.task == "CommonVoice" else None)
        assert hp.get("token_type", "char") == ("bpe" if recipe.task == "CommonVoice" else "char")


PAPER_LM_BEAM = {"beam_size": 100, "topk": 1, "beam_prune_logp": -10.0, "token_prune_min_logp": -5.0,
                 "prune_history": False, "alpha": 0.5, "beta": 1.0, "kenlm_model_path": None}
# What the paper's runs changed from upstream MP3S, per task and head: whettenr/benchmarks
# benchmarks/MP3S/<Task>/<head>/hparams/ssl_brq.yaml (ssl_brq_summix.yaml: the same head settings) against
# ssl.yaml, and their train.py (LibriSpeech: greedy test, then pyctcdecode with the 4-gram; VoxCeleb1: the last
# epoch's weights, utterances cut at 713,601 samples). Every other setting of the two profiles is equal.
PAPER_CHANGES = {
    ("LibriSpeech", "LSTM"): {"batch_size": 8, "test_batch_size": 4, "test_decoding": "greedy",
                              "test_beam_search": None, "lm_beam_search": PAPER_LM_BEAM},
    ("LibriSpeech", "contextnet"): {"batch_size": 8, "test_batch_size": 4, "number_of_epochs": 20,
                                    "test_decoding": "greedy", "test_beam_search": None,
                                    "lm_beam_search": PAPER_LM_BEAM},
    ("CommonVoice", "LSTM"): {},
    ("CommonVoice", "linear"): {},
    ("VoxCeleb1", "ecapa_tdnn"): {"batch_size": 16, "test_batch_size": 4, "verification_weights": "last",
                                  "max_verification_samples": 713601},
    ("VoxCeleb1", "Xvectors"): {"batch_size": 16, "test_batch_size": 4, "verification_weights": "last",
                                "max_verification_samples": 713601, "compute_cost": "nll_loss"},
    ("IEMOCAP", "linear"): {},
    ("IEMOCAP", "ecapa_tdnn"): {"test_batch_size": 2},
    ("SLURP", "linear"): {"test_batch_size": 2},
    ("SLURP", "LSTM_linear"): {"test_batch_size": 2},
}


def plain_settings(hparams: dict) -> dict:
    """The settings of a loaded YAML that are values (numbers, text, lists, dicts of them) or functions."""
    def plain(value):
        if value is None or isinstance(value, (bool, int, float, str)):
            return value
        if isinstance(value, (list, tuple)):
            items = [plain(v) for v in value]
            return items if all(i is not NOT_PLAIN for i in items) else NOT_PLAIN
        if isinstance(value, dict):
            items = {k: plain(v) for k, v in value.items()}
            return items if all(i is not NOT_PLAIN for i in items.values()) else NOT_PLAIN
        if callable(value) and hasattr(value, "func"):  # !name: a functools.partial
            return value.func.__name__
        if callable(value) and hasattr(value, "__name__"):
            return value.__name__
        return NOT_PLAIN
    settings = {key: plain(value) for key, value in hparams.items() if not key.startswith("_")}
    return {key: value for key, value in settings.items() if value is not NOT_PLAIN}


NOT_PLAIN = object()


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda r: f"{r.task}-{r.head}")
def test_paper_profile_changes_from_mp3s_exactly_what_the_papers_runs_changed(recipe, encoders, tmp_path):
    small = {"hidden_size": 8, "contextnet_channels": 8, "contextnet_blocks": 2,
             "ecapa_channels": [8, 8, 8, 8, 24], "embedding_dim": 8, "dnn_neurons": 8}
    text = recipe.hparams("mp3s").read_text()
    extra = {k: v for k, v in small.items() if f"\n{k}:" in text}
    paper = load_recipe(recipe, encoders[48], tmp_path, extra, "paper")
    mp3s = load_recipe(recipe, encoders[48], tmp_path, extra, "mp3s")
    assert (paper["profile"], mp3s["profile"]) == ("paper", "mp3s")
    paper_settings, mp3s_settings = plain_settings(paper), plain_settings(mp3s)
    changed = {key: paper_settings.get(key) for key in paper_settings.keys() | mp3s_settings.keys()
               if paper_settings.get(key) != mp3s_settings.get(key) and key != "profile"
               and not key.endswith("_dataloader_opts")}  # the loaders' batch sizes are the batch_size keys
    assert changed == PAPER_CHANGES[recipe.task, recipe.head]
    # The encoder keeps its dropout while the head trains in the paper's runs only.
    assert paper["ssl"].encoder.active_dropout and not mp3s["ssl"].encoder.active_dropout
    assert paper["ssl"].encoder.encoder.encoder.layerdrop_prob == 0.0


def test_paper_profile_keeps_the_encoders_dropout_while_the_head_trains_and_not_at_test(encoders, tmp_path):
    recipe = next(r for r in RECIPES if (r.task, r.head) == ("IEMOCAP", "linear"))
    wavs, lengths = torch.randn(2, 8000), torch.tensor([1.0, 0.7])
    for profile, differs_in_training in (("paper", True), ("mp3s", False)):
        ssl = load_recipe(recipe, encoders[48], tmp_path / profile, profile=profile)["ssl"]
        modules = torch.nn.ModuleDict({"ssl": ssl})  # as Brain.modules: train() at training, eval() after
        modules.train()
        with torch.no_grad():
            first, second = ssl(wavs, lengths)[0], ssl(wavs, lengths)[0]
        assert (not torch.allclose(first, second)) == differs_in_training, profile
        assert not any(p.requires_grad for p in ssl.encoder.parameters())
        modules.eval()
        with torch.no_grad():
            assert torch.equal(ssl(wavs, lengths)[0], ssl(wavs, lengths)[0])


def test_mp3s_xvector_loss_gives_no_gradient_to_log_probabilities_below_minus_one():
    """Why the Xvectors recipe offers nll_loss: MP3S's margin loss on log-probabilities clamps them."""
    from speechbrain_ext.mp3s.heads import AngularMarginLoss

    log_probs = torch.log_softmax(torch.zeros(2, 1211), dim=-1).requires_grad_()  # log(1/1211) = -7.1
    AngularMarginLoss(margin=0.2, scale=30)(log_probs, torch.tensor([0, 5])).backward()
    assert log_probs.grad.abs().max() == 0
    log_probs = torch.log_softmax(torch.zeros(2, 1211), dim=-1).requires_grad_()
    torch.nn.functional.nll_loss(log_probs, torch.tensor([0, 5])).backward()
    assert log_probs.grad.abs().max() > 0


class _LengthsAsLocal(torch.nn.Module):
    """A sequence network whose forward has a local variable named ``lengths`` but no such parameter."""

    def forward(self, x):
        lengths = x.shape[1]
        return x * lengths


class _LengthsParameter(torch.nn.Module):
    """A sequence network that takes relative lengths: it zeroes the frames past them."""

    def forward(self, x, lengths=None):
        return x * valid_mask(lengths, x.shape[1]).unsqueeze(-1)


def test_a_sequence_network_gets_lengths_only_when_its_forward_declares_them():
    from speechbrain.nnet.RNN import LSTM

    assert takes_lengths(LSTM(hidden_size=4, input_shape=(None, None, 3)))
    assert not takes_lengths(_LengthsAsLocal()) and takes_lengths(_LengthsParameter())
    x, lengths = torch.ones(2, 10, 3), torch.tensor([1.0, 0.5])
    local = FrameHead(_LengthsAsLocal(), 3, 2)  # called on the frames alone (lengths= would be a TypeError)
    torch.testing.assert_close(local(x, lengths), local.output(x * 10))
    pooled = PooledHead(_LengthsParameter(), 3, 2, pool_std=False, normalize=False)
    torch.testing.assert_close(pooled.embed(x, lengths), torch.ones(2, 3))  # the padding it zeroed is not pooled
    head = FrameHead(_LengthsParameter(), 3, 2)
    assert torch.equal(head(x, lengths)[1, 5:], head.output(torch.zeros(5, 3)))


def test_a_bilstm_head_reads_each_utterance_alone_unless_told_to_read_the_padded_batch_as_mp3s():
    from speechbrain.nnet.RNN import LSTM

    torch.manual_seed(0)
    lstm = LSTM(hidden_size=4, input_shape=(None, None, 3), bidirectional=True)
    packed, padded = FrameHead(lstm, 8, 2), FrameHead(lstm, 8, 2, use_lengths=False)
    padded.output = packed.output
    utterance = torch.randn(1, 6, 3)
    batch = torch.cat([utterance, torch.zeros(1, 4, 3)], dim=1)  # the same utterance with 4 padded frames
    lengths = torch.tensor([0.6])
    with torch.no_grad():
        alone = packed(utterance, torch.ones(1))
        torch.testing.assert_close(packed(batch, lengths)[:, :6], alone)
        # The backward direction starts in the padding: the valid frames change.
        assert not torch.allclose(padded(batch, lengths)[:, :6], alone, atol=1e-4)
