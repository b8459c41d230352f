"""Toy VoxCeleb1 in the real on-disk layout (WAV, meta/vox1_meta.csv, a VoxCeleb1-O style trial list)."""

from __future__ import annotations

from pathlib import Path

from speechbrain.utils.logger import get_logger

from speechbrain_ext.data.synth import (
    ToyProsody,
    random_words,
    seeded_rng,
    synthesize_utterance,
    toy_speaker,
)
from speechbrain_ext.data.toy._common import _write_wav_pcm16

logger = get_logger(__name__)

#: Real VoxCeleb1 speaker numbering: the 40 test speakers are id10270-id10309, dev speakers the others.
VOXCELEB1_FIRST_TEST_ID = 10270
VOXCELEB1_NUM_TEST_IDS = 40
_VIDEO_ID_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-"


def _voxceleb1_ids(num_speakers: int, test_speakers: int) -> tuple[list[str], list[str]]:
    """Dev IDs from id10001 (jumping over the test block, as in the corpus) and test IDs from id10270."""
    dev = [10001 + i for i in range(num_speakers)]
    dev = [n + VOXCELEB1_NUM_TEST_IDS if n >= VOXCELEB1_FIRST_TEST_ID else n for n in dev]
    test = [VOXCELEB1_FIRST_TEST_ID + i for i in range(test_speakers)]
    return [f"id{n}" for n in dev], [f"id{n}" for n in test]


def write_toy_voxceleb1(
    root: str | Path,
    num_speakers: int = 4,
    test_speakers: int = 3,
    videos_per_speaker: int = 2,
    utterances_per_video: int = 3,
    seed: int = 0,
    sample_rate: int = 16000,
    min_words: int = 3,
    max_words: int = 8,
) -> Path:
    """Writes a toy VoxCeleb1 in the real on-disk layout, with a VoxCeleb1-O style trial list.

    `<root>/VoxCeleb1/wav/<speaker>/<video>/<NNNNN>.wav` (16-bit mono WAV, utterances numbered
    from 00001 in each video, 11-character YouTube-like video IDs), `meta/vox1_meta.csv`
    (tab-separated `VoxCeleb1 ID, VGGFace1 ID, Gender, Nationality, Set`) and
    `meta/veri_test2.txt` (lines `<label> <enrol> <test>`, paths relative to `wav/`). As in the
    corpus, development speakers are `id10001, id10002, ...` and the test speakers, the only
    ones in the trial list, `id10270, id10271, ...`. Every test utterance is the enrolment of
    one target trial (another utterance of its speaker, from another video when there is one)
    and one non-target trial (an utterance of another test speaker). Speakers alternate F / M;
    each video has its own level and slight pitch offset (a recording condition), so the
    speaker, not the video, is what the utterances of a speaker share. With the defaults,
    utterances last about 1.3 to 5 s, and the same arguments always write the same bytes.

    Arguments
    ---------
    root : str or Path
        Folder in which `VoxCeleb1/` is created.
    num_speakers : int
        Development (training) speakers.
    test_speakers : int
        Test speakers, those of the trial list (2 to 40).
    videos_per_speaker : int
        Videos per speaker.
    utterances_per_video : int
        Utterances per video.
    seed : int
        Seed of the whole corpus.
    sample_rate : int
        Sampling rate of the WAV files (VoxCeleb1: 16000).
    min_words : int
        Fewest words in an utterance.
    max_words : int
        Most words in an utterance.

    Returns
    -------
    Path
        The `<root>/VoxCeleb1` folder (the `data_folder` of `prepare_voxceleb1`).

    Example
    -------
    >>> import tempfile
    >>> tmp = tempfile.TemporaryDirectory()
    >>> vox = write_toy_voxceleb1(tmp.name, num_speakers=1, test_speakers=2, videos_per_speaker=1,
    ...                           utterances_per_video=2)
    >>> sorted(p.name for p in (vox / "wav").iterdir()), sorted(p.name for p in (vox / "meta").iterdir())
    (['id10001', 'id10270', 'id10271'], ['veri_test2.txt', 'vox1_meta.csv'])
    >>> (vox / "meta" / "veri_test2.txt").read_text().split("\\n")[0].split()[0]
    '1'
    >>> tmp.cleanup()
    """
    if not 0 <= num_speakers <= 1211:
        raise ValueError(f"num_speakers must be in [0, 1211], got {num_speakers}")
    if not 2 <= test_speakers <= VOXCELEB1_NUM_TEST_IDS:
        raise ValueError(f"test_speakers must be in [2, {VOXCELEB1_NUM_TEST_IDS}], got {test_speakers}")
    if videos_per_speaker < 1 or not 1 <= utterances_per_video <= 99999:
        raise ValueError(
            f"videos_per_speaker must be >= 1 and utterances_per_video in [1, 99999], "
            f"got {videos_per_speaker}, {utterances_per_video}"
        )
    if videos_per_speaker * utterances_per_video < 2:
        raise ValueError("a test speaker needs at least 2 utterances for a target trial")
    vox_root = Path(root) / "VoxCeleb1"
    dev_ids, test_ids = _voxceleb1_ids(num_speakers, test_speakers)
    utterances: dict[str, list[str]] = {}  # speaker -> paths relative to wav/
    meta = ["VoxCeleb1 ID\tVGGFace1 ID\tGender\tNationality\tSet\n"]
    for index, spk_id in enumerate(dev_ids + test_ids):
        sex = "F" if index % 2 == 0 else "M"
        speaker = toy_speaker(spk_id, seed=seed, sex=sex)
        spk_rng = seeded_rng(seed, "voxceleb1", spk_id)
        utterances[spk_id] = []
        for _ in range(videos_per_speaker):
            video = "".join(spk_rng.choice(list(_VIDEO_ID_CHARS), size=11))
            condition = ToyProsody(f0_scale=float(spk_rng.uniform(0.96, 1.04)), energy=float(spk_rng.uniform(0.6, 1.5)))
            for u in range(utterances_per_video):
                rel = f"{spk_id}/{video}/{u + 1:05d}.wav"
                rng = seeded_rng(seed, "utterance", rel)
                words = random_words(rng, min_words, max_words)
                wav = synthesize_utterance(words, speaker, rng, sample_rate, prosody=condition)
                _write_wav_pcm16(vox_root / "wav" / rel, wav, sample_rate)
                utterances[spk_id].append(rel)
        split = "test" if spk_id in test_ids else "dev"
        meta.append(f"{spk_id}\tToy_Speaker_{spk_id[2:]}\t{sex.lower()}\tToyland\t{split}\n")
    (vox_root / "meta").mkdir(parents=True, exist_ok=True)
    (vox_root / "meta" / "vox1_meta.csv").write_text("".join(meta))
    (vox_root / "meta" / "veri_test2.txt").write_text(
        "".join(f"{label} {enrol} {test}\n" for label, enrol, test in _toy_trials(utterances, test_ids, seed))
    )
    logger.info("Wrote toy VoxCeleb1 (%d dev, %d test speakers) in %s", num_speakers, test_speakers, vox_root)
    return vox_root


def _toy_trials(utterances: dict[str, list[str]], test_ids: list[str], seed: int) -> list[tuple[int, str, str]]:
    """One target and one non-target trial per test utterance, as enrolment."""
    rng = seeded_rng(seed, "voxceleb1", "trials")
    trials = []
    for spk_id in test_ids:
        for enrol in utterances[spk_id]:
            video = enrol.split("/")[1]
            same = [rel for rel in utterances[spk_id] if rel != enrol]
            other_video = [rel for rel in same if rel.split("/")[1] != video]
            target = other_video or same
            others = [rel for other in test_ids if other != spk_id for rel in utterances[other]]
            trials.append((1, enrol, target[int(rng.integers(len(target)))]))
            trials.append((0, enrol, others[int(rng.integers(len(others)))]))
    return trials
