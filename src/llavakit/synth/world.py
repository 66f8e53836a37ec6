"""Generate a whole world into a directory: the test split first (and its paraphrases), then
stage-2, stage-1 and the stage-1.5 drills, then the dev split.

Test goes first so its scene signatures are held out before any training scene is drawn; dev goes
last and draws no scene of test or training, from a random stream of its own, so adding it left
every training file and test scene as it was.
Every file is written atomically and world.json last, so world.json marks a complete world. The
media files are not synced one by one: the whole filesystem is synced once before world.json.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

# stage-1.5 data asks what `llavakit recaption` asks
from llavakit.datagen.recaption import RECAP_PROMPT

from . import tasks_chat, tasks_multi, tasks_single, tasks_video, vocab
from .files import atomic_write_text, write_jsonl
from .questions import held_out_variant
from .records import eval_record, llava_record, with_chance
from .settings import WORLD_VERSION, WorldSettings
from .task import DEV, IMAGE, TEST, VIDEO, Context, HeldOut, Sample, Task, turns
from .video import video_codec

EVAL_TASKS: tuple[Task, ...] = tasks_single.TASKS + tasks_multi.TASKS + tasks_video.TASKS
TRAIN_KINDS: tuple[Task, ...] = EVAL_TASKS + tasks_chat.TRAIN_ONLY + tasks_video.TRAIN_ONLY
# The stage-2 instructions split as LLaVA-OneVision trains them: single-image (and text-only) data
# first, then the OneVision stage's multi-image, multi-view and video data.
SINGLE_IMAGE_KINDS: tuple[Task, ...] = tasks_single.TASKS + tasks_chat.TRAIN_ONLY
ONEVISION_KINDS: tuple[Task, ...] = tasks_multi.TASKS + tasks_video.TASKS + tasks_video.TRAIN_ONLY
assert {t.name for t in SINGLE_IMAGE_KINDS + ONEVISION_KINDS} == {t.name for t in TRAIN_KINDS}
STAGE2_SINGLE_FILE, STAGE2_ONEVISION_FILE = "stage2_single.jsonl", "stage2_onevision.jsonl"
(STAGE1_FILE, STAGE15_FILE, GROUNDING_FILE, TINY_FILE, LISTING_FILE, SIDE_LISTING_FILE, RELATION_FILE, SHAPE_FILE,
 MOTION_FILE, STAGE2_FILE, ANNOTATIONS_FILE, CORPUS_FILE, WORLD_FILE) = (
    "stage1_captions.jsonl",
    "stage15_recap.jsonl",
    "stage15_grounding.jsonl",
    "stage15_tiny.jsonl",
    "stage15_listing.jsonl",
    "stage15_side_listing.jsonl",
    "stage15_relation.jsonl",
    "stage15_shape.jsonl",
    "stage15_motion.jsonl",
    "stage2_instruct.jsonl",
    "annotations.jsonl",
    "text_corpus.txt",
    "world.json",
)
# The held-out splits, each a folder of one JSONL file per eval task: test (reported), dev (where a
# recipe's choices are made), test_paraphrase (test scenes asked in a held-out phrasing).
PARAPHRASE = "test_paraphrase"
EVAL_SPLITS = (TEST, DEV, PARAPHRASE)
# Every file drills() may hold.
DRILL_FILES = (GROUNDING_FILE, TINY_FILE, LISTING_FILE, SIDE_LISTING_FILE, RELATION_FILE, SHAPE_FILE, MOTION_FILE)
# Files this generator names; only these are pruned when a world is regenerated.
GENERATED_MEDIA = re.compile(r"^(stage1|train|eval|test|dev)_[a-z0-9_]+_\d{5}(_[a-z0-9]+)?\.(png|mp4)$")
EVAL_FOLDERS = (*EVAL_SPLITS, "eval")  # "eval": the test split's folder before WORLD_VERSION 11, pruned
TEMP_FILE = re.compile(r"^\.(?P<name>.+)\.[a-z0-9_]+\.tmp$")  # files.atomic_write_bytes: ".<name>.<random>.tmp"


def eval_file(task: str, split: str = TEST) -> str:
    return f"{split}/{task}.jsonl"


def split_size(settings: WorldSettings, split: str) -> int:
    """Samples per eval task in a held-out split."""
    return {TEST: settings.n_eval, DEV: settings.n_dev, PARAPHRASE: settings.n_paraphrase}[split]


def train_count(task: Task, settings: WorldSettings) -> int:
    return settings.scaled(task.train_weight * settings.train_per_task)


def drills(settings: WorldSettings) -> dict[str, tuple[Task, int]]:
    """The stage-1.5 drill files this world holds, each with its task and sample count: one skill
    each, many samples, so a recipe can train each alone or nearly (listings, grounding with the
    tiny-object questions, side listings, relation questions, the shape questions to replay, and
    the motion clips when WorldSettings.motion_drill asks for them). Their images stay out of
    annotations.jsonl, so the tower sees what it saw before."""
    files = {file: (task, train_count(task, settings)) for file, task in (
        (GROUNDING_FILE, tasks_single.GROUNDING), (TINY_FILE, tasks_single.TINY_GROUNDING),
        (LISTING_FILE, tasks_single.LISTING), (SIDE_LISTING_FILE, tasks_single.SIDE_LISTING),
        (RELATION_FILE, tasks_single.RELATION_DRILL), (SHAPE_FILE, tasks_single.SHAPE_GROUNDING))}
    if settings.motion_drill:
        files[MOTION_FILE] = (tasks_video.MOTION_DRILL, settings.scaled(settings.motion_drill))
    return files


def is_complete(out_dir: Path, settings: WorldSettings) -> bool:
    """True when out_dir holds a finished world generated with these settings by this version."""
    try:
        world = json.loads((out_dir / WORLD_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    same = world.get("version") == WORLD_VERSION and world.get("settings") == settings.to_dict()
    return same and all((out_dir / name).is_file() for name in world.get("files", {}))


def generate_world(
    out_dir: str | Path, settings: WorldSettings | None = None, *, progress: bool = True, force: bool = False
) -> Path:
    """Write the synthetic world described by `settings` into out_dir and return its path.

    Does nothing when out_dir already holds a complete world with the same settings (unless
    `force`). Same settings and seed give byte-identical files.
    """
    settings = settings or WorldSettings()
    out = Path(out_dir)
    if not force and is_complete(out, settings):
        return out
    out.mkdir(parents=True, exist_ok=True)
    (out / WORLD_FILE).unlink(missing_ok=True)  # from here on the directory is "incomplete"
    evals, train, stage1, drill_samples = _draw_samples(out, settings, progress)
    _write_world(out, settings, evals, train, stage1, drill_samples)
    return out


def _draw_samples(
    out: Path, settings: WorldSettings, progress: bool
) -> tuple[dict[str, dict[str, list[dict]]], dict[str, list[Sample]], list[Sample], dict[str, list[Sample]]]:
    """Build every sample (media files are written as they are drawn): test and its paraphrases,
    train, stage-1, drills, dev. Returns the eval records by split and task, and the rest."""
    total = (len(EVAL_TASKS) * (settings.n_eval + settings.n_paraphrase + settings.n_dev)
             + sum(train_count(t, settings) for t in TRAIN_KINDS)
             + settings.n_stage1 + sum(count for _, count in drills(settings).values()))
    held_out = HeldOut()
    with tqdm(total=total, desc="synth", unit="sample", disable=not progress) as bar:

        def run(task: Task, split: str, count: int) -> list[Sample]:
            samples = []
            for index in range(count):
                samples.append(task.build(Context(settings, out, split, task.name, index, held_out)))
                bar.update(1)
            return samples

        def paraphrases(task: Task) -> list[Sample]:
            """The first test samples again (same draws, same media) in a held-out phrasing each."""
            samples = []
            for index in range(settings.n_paraphrase):
                ctx = Context(settings, out, TEST, task.name, index, held_out,
                              variant=held_out_variant(task.name, index), write_media=False)
                samples.append(task.build(ctx))
                bar.update(1)
            return samples

        evals = {TEST: {t.name: _eval_records(t, TEST, run(t, TEST, settings.n_eval), settings) for t in EVAL_TASKS}}
        evals[PARAPHRASE] = {t.name: _eval_records(t, PARAPHRASE, paraphrases(t), settings) for t in EVAL_TASKS}
        train = {t.name: run(t, "train", train_count(t, settings)) for t in TRAIN_KINDS}
        stage1 = run(tasks_chat.STAGE1, "stage1", settings.n_stage1)
        drill_samples = {file: run(task, "train", count) for file, (task, count) in drills(settings).items()}
        evals[DEV] = {t.name: _eval_records(t, DEV, run(t, DEV, settings.n_dev), settings) for t in EVAL_TASKS}
    return {split: evals[split] for split in EVAL_SPLITS}, train, stage1, drill_samples


def _write_world(
    out: Path,
    settings: WorldSettings,
    evals: dict[str, dict[str, list[dict]]],
    train: dict[str, list[Sample]],
    stage1: list[Sample],
    drill_samples: dict[str, list[Sample]],
) -> None:
    """Write the JSONL files and the corpus, prune leftovers, then world.json (last)."""
    stage1_records = [llava_record(f"stage1-{i:05d}", s) for i, s in enumerate(stage1)]
    stage15_records = [recap_record(f"stage15-{i:05d}", s) for i, s in enumerate(stage1)]
    drill_records = {file: [llava_record(f"stage15-{task.name}-{i:05d}", s) for i, s in enumerate(drill_samples[file])]
                     for file, (task, _) in drills(settings).items()}
    stage2_records = _shuffled(
        [llava_record(f"train-{kind}-{i:05d}", s) for kind, samples in train.items() for i, s in enumerate(samples)],
        settings.seed,
    )
    annotations = [a for s in stage1 + [s for samples in train.values() for s in samples] for a in s.annotations]
    drill_all = [r for records in drill_records.values() for r in records]
    corpus = corpus_lines(stage1_records + stage15_records + drill_all + stage2_records, annotations)

    counts = {eval_file(task, split): write_jsonl(out / eval_file(task, split), records)
              for split, tasks in evals.items() for task, records in tasks.items()}
    counts[STAGE2_FILE] = write_jsonl(out / STAGE2_FILE, stage2_records)
    # The same records, in the same order, split by the kind of media they show.
    for file, kinds in ((STAGE2_SINGLE_FILE, SINGLE_IMAGE_KINDS), (STAGE2_ONEVISION_FILE, ONEVISION_KINDS)):
        prefixes = tuple(f"train-{kind.name}-" for kind in kinds)
        counts[file] = write_jsonl(out / file, [r for r in stage2_records if r["id"].startswith(prefixes)])
    counts[STAGE1_FILE] = write_jsonl(out / STAGE1_FILE, stage1_records)
    counts[STAGE15_FILE] = write_jsonl(out / STAGE15_FILE, stage15_records)
    for file, records in drill_records.items():
        counts[file] = write_jsonl(out / file, records)
    for file in set(DRILL_FILES) - set(drill_records):  # a drill an earlier run wrote
        (out / file).unlink(missing_ok=True)
    counts[ANNOTATIONS_FILE] = write_jsonl(out / ANNOTATIONS_FILE, annotations)
    atomic_write_text(out / CORPUS_FILE, "".join(line + "\n" for line in corpus))
    counts[CORPUS_FILE] = len(corpus)

    media = _media_paths([r for tasks in evals.values() for records in tasks.values() for r in records]
                         + stage1_records + stage2_records + drill_all)
    _prune(out, media, {eval_file(task, split) for split, tasks in evals.items() for task in tasks})
    manifest = world_manifest(settings, counts, media, evals, {kind: len(samples) for kind, samples in train.items()})
    if hasattr(os, "sync"):  # POSIX: the media (written without a sync each) reach the disk before world.json
        os.sync()
    atomic_write_text(out / WORLD_FILE, json.dumps(manifest, indent=2) + "\n")


def recap_record(sample_id: str, stage1: Sample) -> dict:
    """Stage-1.5 data: a stage-1 image with its detailed description, asked with the ReCap prompt
    (the high-quality re-captioned knowledge of LLaVA-OneVision's stage 1.5; here exact)."""
    return {"id": sample_id, "image": stage1.image,
            "conversations": turns((f"{IMAGE}\n{RECAP_PROMPT}", stage1.description))}


def _eval_records(task: Task, split: str, samples: Sequence[Sample], settings: WorldSettings) -> list[dict]:
    choices = task.choices(settings)
    return with_chance([eval_record(f"{split}-{task.name}-{i:05d}", task.name, s, choices)
                        for i, s in enumerate(samples)])


def _shuffled(records: list[dict], seed: int) -> list[dict]:
    """One seeded order, so a `first:N` mixture draws every kind and not only the first."""
    order = np.random.default_rng([seed, 2]).permutation(len(records))
    return [records[int(i)] for i in order]


def _text_pieces(value: str) -> Iterable[str]:
    for line in value.split("\n"):
        line = line.replace(IMAGE, "").replace(VIDEO, "").strip()
        if line:
            yield line


def corpus_lines(records: Iterable[dict], annotations: Iterable[dict]) -> list[str]:
    """Every distinct piece of training text, sorted; placeholders removed, one line each."""
    pieces = {p for r in records for turn in r["conversations"] for p in _text_pieces(turn["value"])}
    pieces |= {p for a in annotations for caption in a["captions"] for p in _text_pieces(caption)}
    return sorted(pieces)


def _media_paths(records: Iterable[dict]) -> set[str]:
    paths = set()
    for record in records:
        image = record.get("image")
        paths.update([image] if isinstance(image, str) else image or [])
        if "video" in record:
            paths.add(record["video"])
    return paths


def _prune(out: Path, keep_media: set[str], keep_eval: set[str]) -> None:
    """Remove what a previous, different or killed run left behind: only names this generator makes."""
    for folder in ("images", "videos"):
        for path in sorted((out / folder).glob("*")) if (out / folder).is_dir() else []:
            stale = GENERATED_MEDIA.match(path.name) and f"{folder}/{path.name}" not in keep_media
            if path.is_file() and (stale or _our_temp_file(path.name)):
                path.unlink()
    for folder in EVAL_FOLDERS:
        for path in sorted((out / folder).glob("*.jsonl")):
            if f"{folder}/{path.name}" not in keep_eval:
                path.unlink()
    temp_files = sorted(out.glob(".*.tmp"))
    temp_files += [path for folder in EVAL_FOLDERS for path in sorted((out / folder).glob(".*.tmp"))]
    for path in temp_files:
        if _our_temp_file(path.name):
            path.unlink()
    old = out / "eval"  # the folder of the test split before WORLD_VERSION 11, once emptied
    if old.is_dir() and not any(old.iterdir()):
        old.rmdir()


def _our_temp_file(name: str) -> bool:
    match = TEMP_FILE.match(name)
    if not match:
        return False
    target = match["name"]
    return bool(GENERATED_MEDIA.match(target)) or target.endswith(".jsonl") or target in (CORPUS_FILE, WORLD_FILE)


def world_manifest(
    settings: WorldSettings, counts: dict, media: set[str], evals: dict[str, dict[str, list[dict]]],
    stage2_kinds: dict[str, int],
) -> dict:
    return {
        "generator": "llavakit.synth",
        "version": WORLD_VERSION,
        "seed": settings.seed,
        "settings": settings.to_dict(),
        "vocab": vocab.as_dict(),
        "files": dict(sorted(counts.items())),
        "media": {
            "images": sum(p.startswith("images/") for p in media),
            "videos": sum(p.startswith("videos/") for p in media),
            "video_codec": video_codec(),
            "video_pix_fmt": "yuv420p",
            "video_fps": settings.video_fps,
        },
        "stage2_kinds": stage2_kinds,
        "tasks": {  # the test split's
            task: {
                "file": eval_file(task),
                "n": len(records),
                "choices": records[0]["choices"],
                "chance": records[0]["chance"],
            }
            for task, records in evals[TEST].items()
        },
        "splits": {
            split: {task: {"file": eval_file(task, split), "n": len(records), "chance": records[0]["chance"]}
                    for task, records in tasks.items()}
            for split, tasks in evals.items()
        },
    }


def load_world(out_dir: str | Path) -> dict:
    """world.json of a generated world."""
    return json.loads((Path(out_dir) / WORLD_FILE).read_text(encoding="utf-8"))
