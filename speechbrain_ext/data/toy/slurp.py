"""Toy SLURP in the real on-disk layout (dataset/slurp/<split>.jsonl, slurp_real/ FLAC recordings)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from speechbrain.utils.logger import get_logger

from speechbrain_ext.data.synth import (
    seeded_rng,
    synthesize_utterance,
    toy_speaker,
    write_flac,
)

logger = get_logger(__name__)

#: Toy SLURP commands: scenario -> (action, sentence) pairs, `{slot}` filled from `_SLURP_SLOTS`.
#: Each scenario's sentences share its keywords, so the scenario can be heard in the audio.
_SLURP_COMMANDS: dict[str, tuple[tuple[str, str], ...]] = {
    "alarm": (("set", "set an alarm at {time}"), ("query", "check my alarm for {time}"),
              ("remove", "remove the alarm at {time}")),
    "audio": (("volume_up", "turn the volume up"), ("volume_down", "turn the volume down"),
              ("volume_mute", "mute the volume")),
    "calendar": (("set", "add a meeting {date}"), ("query", "when is my meeting {date}"),
                 ("remove", "cancel the meeting {date}")),
    "cooking": (("recipe", "give me a recipe for {food_type}"), ("query", "find a good {food_type} recipe")),
    "datetime": (("query", "what time is it in {time_zone}"), ("convert", "convert the time to {time_zone}")),
    "email": (("sendemail", "send an email to {person}"), ("query", "read my email from {person}")),
    "general": (("joke", "tell me a funny joke"), ("quirky", "sing me a silly joke")),
    "iot": (("hue_lightoff", "switch off the lights"), ("hue_lightdim", "dim the lights in the {house_place}"),
            ("hue_lighton", "switch on the lights in the {house_place}")),
    "lists": (("createoradd", "add {list_item} to my shopping list"), ("query", "what is on my shopping list"),
              ("remove", "remove {list_item} from my list")),
    "music": (("likeness", "i love this song"), ("query", "what song is this"), ("settings", "shuffle my songs")),
    "news": (("query", "what is the news about {news_topic}"), ("query", "read the latest {news_topic} news")),
    "play": (("music", "play some music"), ("radio", "play the radio"), ("podcasts", "play my podcast")),
    "qa": (("definition", "what is the definition of {definition_word}"),
           ("definition", "define the word {definition_word}")),
    "recommendation": (("events", "recommend an event this weekend"), ("movies", "recommend a good movie")),
    "social": (("post", "post a tweet saying hello"), ("query", "any new tweets from my friends")),
    "takeaway": (("order", "order a pizza from {business_name}"), ("query", "where is my pizza order")),
    "transport": (("ticket", "book a train ticket to {place_name}"),
                  ("query", "when does the train to {place_name} leave")),
    "weather": (("query", "what is the weather like {date}"), ("query", "is the weather sunny {date}")),
}  # fmt: skip
_SLURP_SLOTS: dict[str, tuple[str, ...]] = {
    "time": ("seven", "six am", "noon", "nine pm"),
    "date": ("today", "tomorrow", "on friday", "this week"),
    "food_type": ("pasta", "eggs", "rice", "soup"),
    "time_zone": ("tokyo", "sydney", "chicago"),
    "person": ("john", "mary", "anna", "peter"),
    "house_place": ("kitchen", "bedroom", "hall"),
    "list_item": ("milk", "bread", "butter"),
    "news_topic": ("sports", "science", "politics"),
    "definition_word": ("ocean", "forest", "planet"),
    "business_name": ("dominos", "pizza hut"),
    "place_name": ("london", "paris", "boston", "berlin"),
}
#: Split -> first slurp_id of its toy sentences (distinct blocks, as the splits share no sentence).
_SLURP_ID_BLOCKS: dict[str, int] = {"train": 10000, "devel": 20000, "test": 30000}


def _slurp_entry(slurp_id: int, scenario: str, rng: np.random.Generator) -> dict:
    """One toy SLURP sentence in the .jsonl format (recordings added by the caller)."""
    action, template = _SLURP_COMMANDS[scenario][int(rng.integers(len(_SLURP_COMMANDS[scenario])))]
    words, annotation, entities = [], [], []
    for token in template.split():
        if token.startswith("{"):
            slot = token[1:-1]
            value = _SLURP_SLOTS[slot][int(rng.integers(len(_SLURP_SLOTS[slot])))]
            entities.append({"type": slot, "span": list(range(len(words), len(words) + len(value.split())))})
            annotation.append(f"[{slot} : {value}]")
            words.extend(value.split())
        else:
            annotation.append(token)
            words.append(token)
    return {
        "slurp_id": slurp_id,
        "sentence": " ".join(words),
        "sentence_annotation": " ".join(annotation),
        "intent": f"{scenario}_{action}",
        "action": action,
        "tokens": [{"surface": w, "id": i, "lemma": w, "pos": "X"} for i, w in enumerate(words)],
        "scenario": scenario,
        "recordings": [],
        "entities": entities,
    }


def write_toy_slurp(
    root: str | Path,
    recordings_per_scenario: int = 4,
    scenarios: Sequence[str] | None = None,
    seed: int = 0,
    splits: Sequence[str] = ("train", "devel", "test"),
    recordings_per_sentence: int = 2,
    speakers_per_split: int = 4,
    sample_rate: int = 16000,
) -> Path:
    """Writes a toy SLURP in the real on-disk layout.

    `<root>/dataset/slurp/<split>.jsonl` (one JSON object per sentence with `slurp_id`,
    `sentence`, `sentence_annotation`, `intent`, `action`, `tokens`, `scenario`, `recordings`
    and `entities`, as in the corpus) and the 16 kHz FLAC recordings in `<root>/slurp_real/`
    (`audio-<timestamp>-headset.flac` and `audio-<timestamp>.flac`, as SLURP's headset and
    far-field files are named). Each scenario's sentences are commands built on its own
    keywords ("set an alarm at seven", "play some music"), so the scenario is learnable from
    the audio. Each sentence is recorded by `recordings_per_sentence` different speakers,
    drawn from `speakers_per_split` speakers per split (disjoint between splits); sentences
    of different splits have distinct slurp_ids. The same arguments always write the same bytes.

    Arguments
    ---------
    root : str or Path
        Folder in which `dataset/slurp/` and `slurp_real/` are created.
    recordings_per_scenario : int
        Recordings of each scenario in each split.
    scenarios : sequence of str, optional
        Scenarios to write (names of `speechbrain_ext.data.slurp.SCENARIOS`); all 18 when None.
    seed : int
        Seed of the whole corpus.
    splits : sequence of str
        Splits to write ("train", "devel", "test").
    recordings_per_sentence : int
        Speakers who record each sentence (at most 9).
    speakers_per_split : int
        Speakers of each split.
    sample_rate : int
        Sampling rate of the FLAC files (SLURP: 16000).

    Returns
    -------
    Path
        `root`, the folder to give `prepare_slurp` as `data_folder`.

    Example
    -------
    >>> import json, tempfile
    >>> tmp = tempfile.TemporaryDirectory()
    >>> root = write_toy_slurp(tmp.name, recordings_per_scenario=1, scenarios=["alarm"], splits=["test"])
    >>> entry = json.loads((root / "dataset" / "slurp" / "test.jsonl").read_text())
    >>> wav = root / "slurp_real" / entry["recordings"][0]["file"]
    >>> entry["scenario"], "alarm" in entry["sentence"], wav.is_file()
    ('alarm', True, True)
    >>> tmp.cleanup()
    """
    scenarios = list(_SLURP_COMMANDS if scenarios is None else scenarios)
    unknown = [s for s in scenarios if s not in _SLURP_COMMANDS]
    if unknown:
        raise ValueError(f"unknown SLURP scenario(s) {unknown}; choose from {sorted(_SLURP_COMMANDS)}")
    if recordings_per_scenario < 1 or speakers_per_split < 1:
        raise ValueError("recordings_per_scenario and speakers_per_split must be >= 1")
    if not 1 <= recordings_per_sentence <= 9:
        raise ValueError(f"recordings_per_sentence must be in [1, 9], got {recordings_per_sentence}")
    unknown = [s for s in splits if s not in _SLURP_ID_BLOCKS]
    if unknown:
        raise ValueError(f"unknown SLURP split(s) {unknown}; choose from {list(_SLURP_ID_BLOCKS)}")
    root = Path(root)
    jsonl_dir = root / "dataset" / "slurp"
    jsonl_dir.mkdir(parents=True, exist_ok=True)
    for split in splits:
        speakers = [
            toy_speaker(f"slurp-{split}-{i}", seed=seed, sex="F" if i % 2 == 0 else "M")
            for i in range(speakers_per_split)
        ]
        lines, slurp_id, turn = [], _SLURP_ID_BLOCKS[split], 0
        for scenario in scenarios:
            for first in range(0, recordings_per_scenario, recordings_per_sentence):
                slurp_id += 1
                rng = seeded_rng(seed, "slurp", str(slurp_id))
                entry = _slurp_entry(slurp_id, scenario, rng)
                words = entry["sentence"].upper().split()
                for r in range(min(recordings_per_sentence, recordings_per_scenario - first)):
                    name = f"audio-{1434500000 + 10 * slurp_id + r}{'-headset' if r % 2 == 0 else ''}.flac"
                    speaker = speakers[turn % len(speakers)]  # each speaker says every scenario
                    turn += 1
                    wav = synthesize_utterance(words, speaker, seeded_rng(seed, "slurp", name), sample_rate)
                    write_flac(root / "slurp_real" / name, wav, sample_rate)
                    entry["recordings"].append({"file": name, "wer": 0.0, "ent_wer": 0.0, "status": "correct"})
                lines.append(json.dumps(entry) + "\n")
        (jsonl_dir / f"{split}.jsonl").write_text("".join(lines), encoding="utf-8")
    logger.info("Wrote toy SLURP (%s; %d scenarios) in %s", ", ".join(splits), len(scenarios), root)
    return root
