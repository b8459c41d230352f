"""CTC decoding of the MP3S ASR heads: beam search (MP3S test decoding), greedy, KenLM, BPE units."""

import pytest
import torch
from speechbrain.dataio.encoder import CTCTextEncoder
from speechbrain.utils.metric_stats import ErrorRateStats

from speechbrain_ext.mp3s.text import CharacterUnits, CTCDecoder, TranscriptionStats, train_sentencepiece

# MP3S test_beam_search (benchmarks/MP3S/LibriSpeech/LSTM/hparams/ssl.yaml), beam size apart.
MP3S_BEAM = {"topk": 1, "beam_prune_logp": -12.0, "token_prune_min_logp": -1.2, "prune_history": True,
             "alpha": 0.8, "beta": 1.2, "kenlm_model_path": None}
SYMBOLS = list(" ABCT")  # index 0 is the blank


@pytest.fixture
def units():
    encoder = CTCTextEncoder()
    encoder.insert_blank(index=0)
    encoder.update_from_iterable(SYMBOLS)
    return CharacterUnits(encoder, num_outputs=len(SYMBOLS) + 2)  # two unused outputs, as a head sized in YAML


def frames(*rows: dict, size: int = 7) -> torch.Tensor:
    """Log-probabilities (T, V) from per-frame {symbol: probability}; the rest of the mass is spread."""
    index = {s: i + 1 for i, s in enumerate(SYMBOLS)} | {"_": 0}
    out = torch.full((len(rows), size), 1e-4)
    for t, row in enumerate(rows):
        for symbol, p in row.items():
            out[t, index[symbol]] = p
    return (out / out.sum(dim=1, keepdim=True)).log()


def wer(hyps, refs) -> float:
    stats = ErrorRateStats()
    stats.append([str(i) for i in range(len(refs))], hyps, [r.split() for r in refs])
    return stats.summarize("error_rate")


def test_beam_of_one_decodes_as_greedy(units):
    generator = torch.Generator().manual_seed(0)
    greedy = CTCDecoder(units, 0)
    beam1 = CTCDecoder(units, 0, {**MP3S_BEAM, "beam_size": 1})
    for _ in range(20):
        logits = 3 * torch.randn(3, 30, 7, generator=generator)
        logits[..., 5:] = -30.0  # outputs past the labels are never chosen by a trained head
        log_probs = logits.log_softmax(dim=-1)
        lengths = torch.tensor([1.0, 0.8, 0.5])
        assert beam1(log_probs, lengths, beam=True) == greedy(log_probs, lengths)


def test_wider_beam_is_at_most_greedys_error_on_a_toy_set(units):
    # Frames where the blank wins each frame but "A" wins over the alignments (0.64 vs 0.36):
    # greedy drops the letter, the beam (which sums the alignments of a text) keeps it.
    hidden_letter = frames({"A": 0.4, "_": 0.6}, {"A": 0.4, "_": 0.6}, {"_": 1.0}, {" ": 0.9}, {"B": 0.9}, {"_": 0.9})
    clear = frames({"C": 0.9}, {"A": 0.9}, {"_": 0.9}, {"T": 0.9}, {" ": 0.9}, {"A": 0.9})
    log_probs = torch.stack([hidden_letter, clear])
    refs = ["A B", "CAT A"]
    lengths = torch.ones(2)
    greedy = CTCDecoder(units, 0)(log_probs, lengths)
    beam = CTCDecoder(units, 0, {**MP3S_BEAM, "beam_size": 143})(log_probs, lengths, beam=True)
    assert greedy == [["B"], ["CAT", "A"]] and beam == [["A", "B"], ["CAT", "A"]]
    assert wer(beam, refs) < wer(greedy, refs)


ARPA = """\\data\\
ngram 1=5
ngram 2=2

\\1-grams:
-1.0\t<unk>\t0
-99\t<s>\t0
-1.0\t</s>\t0
-0.1\tCAT\t0
-4.0\tBAT\t0

\\2-grams:
-0.1\t<s> CAT
-4.0\t<s> BAT

\\end\\
"""


def test_kenlm_language_model_changes_the_hypothesis_towards_its_vocabulary(units, tmp_path):
    pytest.importorskip("kenlm", reason="the [lm] extra (kenlm) is not installed")
    pytest.importorskip("pygtrie", reason="the [lm] extra (pygtrie, for SpeechBrain's KenLM scorer) is not installed")
    lm = tmp_path / "toy.arpa"
    lm.write_text(ARPA)
    # The acoustics slightly prefer "BAT"; the toy LM knows "CAT" and hardly "BAT".
    log_probs = frames({"B": 0.55, "C": 0.45}, {"A": 0.9}, {"T": 0.9}).unsqueeze(0)
    lengths = torch.ones(1)
    without = CTCDecoder(units, 0, {**MP3S_BEAM, "beam_size": 10})(log_probs, lengths, beam=True)
    with_lm = CTCDecoder(units, 0, {**MP3S_BEAM, "beam_size": 10, "kenlm_model_path": str(lm)})(log_probs, lengths,
                                                                                               beam=True)
    assert without == [["BAT"]] and with_lm == [["CAT"]]


def test_bpe_tokenizer_is_trained_once_and_reused(tmp_path):
    import csv

    words = ["yr", "wyf", "mae", "hi", "yn", "dda", "iawn", "diolch", "bore", "nos", "da", "croeso"]
    train = tmp_path / "train.csv"
    with open(train, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["ID", "duration", "wav", "spk_id", "wrd"])
        for i in range(60):
            writer.writerow([f"u{i}", "1.0", "x.wav", "s", " ".join(words[(i + k) % len(words)] for k in range(5))])
    tokenizer = train_sentencepiece(tmp_path / "save", train, vocab_size=40)
    model = tmp_path / "save" / "40_bpe.model"
    assert model.is_file() and tokenizer.sp.vocab_size() == 40
    stamp = model.stat().st_mtime_ns
    again = train_sentencepiece(tmp_path / "save", train, vocab_size=40)
    assert model.stat().st_mtime_ns == stamp and again.sp.vocab_size() == 40
    from speechbrain_ext.mp3s.text import SentencePieceUnits

    units = SentencePieceUnits(again)
    ids = again.sp.encode_as_ids("bore da croeso")
    assert units.words(ids) == ["bore", "da", "croeso"] and len(units.vocabulary) == 40
    log_probs = torch.full((1, len(ids) * 2, 40), -20.0)
    for t, token in enumerate(ids):
        log_probs[0, 2 * t, token] = 0.0
        log_probs[0, 2 * t + 1, 0] = 0.0  # piece 0 (<unk>) is the CTC blank, as in MP3S
    padded = SentencePieceUnits(again, num_outputs=48)  # a head with more outputs than pieces
    assert len(padded.vocabulary) == 48 and padded.vocabulary[40:] == [""] * 8
    assert padded.words([*ids[:1], 45, *ids[1:]]) == ["bore", "da", "croeso"]  # an unused output reads as nothing
    with pytest.raises(ValueError, match="40 pieces but the head 30 outputs"):
        SentencePieceUnits(again, num_outputs=30)
    for beam in (None, {**MP3S_BEAM, "beam_size": 8}):
        decoded = CTCDecoder(units, 0, beam)(log_probs.log_softmax(-1), torch.ones(1), beam=True)
        assert decoded == [["bore", "da", "croeso"]]


def test_a_bpe_tokenizer_trained_on_other_transcripts_or_left_empty_is_refused(tmp_path):
    import csv

    def write(path, words):
        with open(path, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["ID", "duration", "wav", "spk_id", "wrd"])
            for i in range(60):
                writer.writerow([f"u{i}", "1.0", "x.wav", "s", " ".join(words[(i + k) % len(words)] for k in range(5))])

    welsh, basque = tmp_path / "cy.csv", tmp_path / "eu.csv"
    write(welsh, ["yr", "wyf", "mae", "hi", "yn", "dda", "iawn", "diolch", "bore", "nos", "da", "croeso"])
    write(basque, ["kaixo", "eskerrik", "asko", "egun", "on", "gabon", "bai", "ez", "etxe", "mendi", "ur", "su"])
    train_sentencepiece(tmp_path / "save", welsh, vocab_size=40)
    with pytest.raises(ValueError, match=r"trained on other transcripts or options .*'transcripts_digest': '[0-9a-f]+'"
                                         r".*eu.csv"):
        train_sentencepiece(tmp_path / "save", basque, vocab_size=40)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "40_bpe.model").write_bytes(b"")
    with pytest.raises(ValueError, match=r"40_bpe.model is empty"):
        train_sentencepiece(tmp_path / "empty", welsh, vocab_size=40)


def test_greedy_test_decoding_never_searches_and_another_choice_is_refused(units):
    log_probs = frames({"A": 0.4, "_": 0.6}, {"A": 0.4, "_": 0.6}, {"_": 1.0}).unsqueeze(0)
    beam = {**MP3S_BEAM, "beam_size": 143}
    assert CTCDecoder(units, 0, beam)(log_probs, torch.ones(1), beam=True) == [["A"]]  # the alignments summed
    assert CTCDecoder(units, 0, beam, test_decoding="greedy")(log_probs, torch.ones(1), beam=True) == [[]]
    with pytest.raises(ValueError, match="test_decoding must be 'beam' or 'greedy', got 'beams'"):
        CTCDecoder(units, 0, beam, test_decoding="beams")


def test_transcripts_are_scored_and_written_beside_their_references(tmp_path):
    import csv

    stats = TranscriptionStats()
    stats.append(["a", "b"], [["THE", "CAT"], []], ["THE BAT", "A DOG"])
    # WER: 1 substitution and 2 deletions of 4 words; CER: 1 + 5 edits of the 12 characters (spaces included)
    assert stats.summarize() == {"WER": 75.0, "CER": 50.0}
    with open(stats.write(tmp_path / "hypotheses.csv"), newline="") as handle:
        assert list(csv.DictReader(handle)) == [{"ID": "a", "reference": "THE BAT", "hypothesis": "THE CAT"},
                                                {"ID": "b", "reference": "A DOG", "hypothesis": ""}]
