"""Robustness to image corruptions: the clean mIoU and the mIoU under every (corruption,
severity), as the SegFormer paper measures on Cityscapes-C (Xie et al., NeurIPS 2021, §4.4
and Table 5), on any segmentation dataset this project reads.

Each corrupted image is ``data.corruptions.corrupt`` of the split's original image (before
the test resize), drawn from ``image_rng(seed, index, corruption, severity)``, so a table is
reproducible and an evaluation can be resumed anywhere; the images are corrupted in the
input pipeline's worker threads (``CorruptedSource`` is the split's source, read by
``eval_batches``' pool), the model runs the dataset's test pipeline unchanged. Labels are
never corrupted.

``run`` scores the clean split, then every (corruption, severity) of the plan, saving each
result as ``OUT/runs/<corruption>-<severity>.json`` when it is done (written whole, then
renamed): an interrupted run resumes with the results it lacks. Then it writes

    OUT/robustness.json               everything below, plus aAcc/mAcc and per-class IoU
    OUT/robustness.csv                the paper's layout: one row per model; clean, one
                                      column per corruption (mean over its severities), mean
    OUT/robustness_by_severity.csv    one row per (model, corruption, severity)
    OUT/robustness.md                 both tables in Markdown
    OUT/robustness.png                mIoU against severity, one line per corruption family

The tables are a function of the results alone (no times, no paths of OUT), so the same
evaluation gives the same bytes.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
import pathlib
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from segformer_jax.data import corruptions as C
from segformer_jax.errors import EvaluationError
from segformer_jax.files import atomic_write
from segformer_jax.tables import markdown_table

CLEAN = "clean"
SUBSETS = {"all": C.ALL, "common": C.COMMON, "paper": C.PAPER, **C.FAMILIES}
PAPER_NOISE_SEVERITIES = (1, 2, 3)   # Table 5 tests its 4 noises at severities 1-3 only


# ----------------------------------------------------------------------------- the plan


def select_corruptions(text: str) -> tuple[str, ...]:
    """Corruption names from ``all`` (19), ``common`` (the 15 of ImageNet-C), ``paper`` (the
    SegFormer paper's 16), a family (``noise``, ``blur``, ``weather``, ``digital``) or a
    comma-separated list of names and subsets; in the order given, each once."""
    names: list[str] = []
    for item in (v.strip() for v in text.split(",")):
        if not item:
            continue
        chosen = SUBSETS.get(item, (item,))
        unknown = [n for n in chosen if n not in C.CORRUPTIONS]
        if unknown:
            raise EvaluationError(f"unknown corruption {unknown[0]!r}; choose from "
                                  f"{', '.join(C.ALL)}, or {', '.join(SUBSETS)}")
        names += [n for n in chosen if n not in names]
    if not names:
        raise EvaluationError(f"no corruption named in {text!r}")
    return tuple(names)


def select_severities(text: str) -> tuple[int, ...] | str:
    """Severities like ``1,2,3,4,5`` (each 1-5), or ``paper``: the paper's protocol, noises
    at 1-3 and the other corruptions at 1-5."""
    if text.strip() == "paper":
        return "paper"
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values:
        raise EvaluationError(f"severities are integers from 1 to 5, e.g. 1,2,3,4,5, or paper; got {text!r}")
    outside = [v for v in values if v not in C.SEVERITIES]
    if outside:
        raise EvaluationError(f"severity {outside[0]} is outside 1-5 (ImageNet-C's five levels)")
    return tuple(sorted(set(values)))


def plan(corruptions: Sequence[str], severities: Sequence[int] | str) -> list[tuple[str, int]]:
    """Every (corruption, severity) to score, in order."""
    pairs = []
    for name in corruptions:
        if severities == "paper":
            levels = PAPER_NOISE_SEVERITIES if C.FAMILY[name] == "noise" else C.SEVERITIES
        else:
            levels = tuple(severities)
        pairs += [(name, s) for s in levels]
    return pairs


# ----------------------------------------------------------------------------- the images


@dataclasses.dataclass(frozen=True)
class CorruptedSource:
    """``source`` with each example's image corrupted (``name`` at ``severity``) from its own
    random state ``image_rng(seed, index, name, severity)``; labels as they are."""

    source: Any
    name: str
    severity: int
    seed: int = 0

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> dict[str, Any]:
        record = dict(self.source[index])
        try:
            record["image"] = C.corrupt(np.asarray(record["image"]), self.name, self.severity,
                                        C.image_rng(self.seed, index, self.name, self.severity))
        except ValueError as e:
            name = record.get("file_name", b"")
            name = name.decode() if isinstance(name, bytes) else str(name)
            raise EvaluationError(f"example {index}{f' ({name})' if name else ''}: {e}") from None
        return record


def check_labelled(split: Any, examples: int = 4) -> None:
    """Refuses a split whose first masks hold nothing but the ignore index (the Cityscapes
    test split's public masks are all "unlabeled"): there is no mIoU to measure."""
    n = min(examples, len(split.source))
    if n == 0:
        raise EvaluationError(f"the {split.split} split of {split.name} has no examples")
    for i in range(n):
        record = split.source[i]
        mask = record.get("segmentation_mask", record.get("label"))
        if mask is None:
            raise EvaluationError(f"the {split.split} split of {split.name} has no labels")
        if (np.asarray(mask) != split.ignore_index).any():
            return
    raise EvaluationError(f"the {split.split} split of {split.name} has no labels: every pixel of "
                          f"its first {n} masks is the ignore index {split.ignore_index}; a "
                          f"robustness table needs ground truth (e.g. --split validation)")


# ----------------------------------------------------------------------------- running


def _run_path(out: pathlib.Path, name: str, severity: int) -> pathlib.Path:
    return out / "runs" / (f"{CLEAN}.json" if name == CLEAN else f"{name}-{severity}.json")


def _number(value: Any) -> float | None:
    value = float(value)
    return None if math.isnan(value) else value


def _saved(out: pathlib.Path, pairs: Sequence[tuple[str, int]], identity: Mapping[str, Any]
           ) -> dict[tuple[str, int], dict[str, Any]]:
    """The results already in ``out`` for these pairs; one of another evaluation is refused
    (nothing is overwritten)."""
    saved = {}
    for pair in pairs:
        path = _run_path(out, *pair)
        if not path.exists():
            continue
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
            theirs = record["identity"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise EvaluationError(f"{path}: not a saved robustness result ({e}); remove it or "
                                  f"choose another --out") from None
        differ = [k for k in sorted(set(theirs) | set(identity)) if theirs.get(k) != identity.get(k)]
        if differ:
            k = differ[0]
            raise EvaluationError(f"{path}: saved by another evaluation (its {k} is {theirs.get(k)!r}, "
                                  f"this one's {identity.get(k)!r}); choose another --out or remove it")
        saved[pair] = record
    return saved


def _write_atomic(path: pathlib.Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, text)


def run(evaluator: Any, variables: Any, pairs: Sequence[tuple[str, int]], out: str | os.PathLike,
        *, seed: int, identity: Mapping[str, Any], label: str,
        log: Callable[[str], None] = print, is_writer: bool = True) -> dict[str, Any]:
    """Scores the clean split and each (corruption, severity) of ``pairs`` with ``evaluator``
    (a ``SegmentationEvaluator``), resuming from ``out``'s saved results, and writes the
    tables and the plot there; returns the report (``report``'s dict) with ``computed``, the
    pairs scored by this call. ``identity`` (checkpoint, dataset, test settings, ...) must
    equal that of every saved result. Every process runs; ``is_writer`` writes."""
    out = pathlib.Path(out)
    every = [(CLEAN, 0), *pairs]
    identity = json.loads(json.dumps({**identity, "seed": int(seed)}))  # as saved: lists, not tuples
    results = _saved(out, every, identity)
    if results:
        log(f"resuming: {len(results)} of {len(every)} results saved in {out / 'runs'}")
    computed = []
    for name, severity in every:
        if (name, severity) in results:
            continue
        start = time.perf_counter()
        source = None if name == CLEAN else CorruptedSource(evaluator.source, name, severity, seed)
        summary = evaluator(variables, source=source)
        seconds = time.perf_counter() - start
        record = {"identity": identity, "corruption": name, "severity": severity,
                  "num_examples": int(summary["num_examples"]), "mIoU": _number(summary["mIoU"]),
                  "aAcc": _number(summary["aAcc"]), "mAcc": _number(summary["mAcc"]),
                  "IoU": dict(zip(summary["class_names"], map(_number, summary["IoU"]))),
                  "seconds": round(seconds, 3)}
        if is_writer:
            _write_atomic(_run_path(out, name, severity), json.dumps(record, indent=1) + "\n")
        results[(name, severity)] = record
        computed.append((name, severity))
        what = CLEAN if name == CLEAN else f"{name} severity {severity}"
        log(f"{what}: mIoU {_pct(record['mIoU']) or 'n/a'} "
            f"({record['num_examples']} images, {seconds:.1f} s)")
    result = report(label, results, pairs)
    if is_writer:
        write(out, [result])
    return {**result, "computed": computed}


# ----------------------------------------------------------------------------- the report


def _mean(values: Sequence[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return sum(kept) / len(kept) if kept else None


def report(label: str, results: Mapping[tuple[str, int], Mapping[str, Any]],
           pairs: Sequence[tuple[str, int]]) -> dict[str, Any]:
    """One model's robustness: ``clean``, and per corruption its mIoU at each severity and
    their mean; ``mean`` is the mean over corruptions of those means (the paper's summary),
    ``families`` the mean over each family's corruptions at each severity. mIoUs in [0, 1]."""
    clean = results[(CLEAN, 0)]
    names = list(dict.fromkeys(name for name, _ in pairs))
    per = {}
    for name in names:
        levels = {s: results[(name, s)] for n, s in pairs if n == name}
        per[name] = {"family": C.FAMILY[name],
                     "severities": {str(s): {k: r[k] for k in ("mIoU", "aAcc", "mAcc")}
                                    for s, r in levels.items()},
                     "mean": _mean([r["mIoU"] for r in levels.values()])}
    families = {}
    for family in C.FAMILIES:
        members = [n for n in names if C.FAMILY[n] == family]
        if members:
            levels = sorted({int(s) for n in members for s in per[n]["severities"]})
            families[family] = {str(s): _mean([per[n]["severities"].get(str(s), {}).get("mIoU")
                                               for n in members]) for s in levels}
    return {"model": label, "num_examples": clean["num_examples"], "identity": clean["identity"],
            "clean": {k: clean[k] for k in ("mIoU", "aAcc", "mAcc")},
            "corruptions": per, "mean": _mean([v["mean"] for v in per.values()]),
            "families": families}


def _or_nan(value: float | None) -> float:
    return math.nan if value is None else value


def _pct(value: float | None) -> str:
    return "" if value is None else f"{100 * value:.2f}"


def table_rows(reports: Sequence[Mapping[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """The paper's layout: header and one row per model (mIoU ×100, 2 decimals)."""
    names = list(dict.fromkeys(n for r in reports for n in r["corruptions"]))
    header = ["model", CLEAN, *names, "mean"]
    rows = [[r["model"], _pct(r["clean"]["mIoU"]),
             *(_pct(r["corruptions"].get(n, {}).get("mean")) for n in names), _pct(r["mean"])]
            for r in reports]
    return header, rows


def severity_rows(reports: Sequence[Mapping[str, Any]]) -> tuple[list[str], list[list[str]]]:
    header = ["model", "corruption", "family", "severity", "mIoU", "aAcc", "mAcc"]
    rows = []
    for r in reports:
        rows.append([r["model"], CLEAN, "", "0", *(_pct(r["clean"][k]) for k in ("mIoU", "aAcc", "mAcc"))])
        for name, v in r["corruptions"].items():
            for s, m in v["severities"].items():
                rows.append([r["model"], name, v["family"], s, *(_pct(m[k]) for k in ("mIoU", "aAcc", "mAcc"))])
    return header, rows


def _csv(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


def markdown(reports: Sequence[Mapping[str, Any]]) -> str:
    """Both tables: the paper's layout, then each corruption's mIoU per severity."""
    header, rows = table_rows(reports)
    table = markdown_table([h.replace("_", " ") for h in header], rows, numbers_from=1)
    parts = ["mIoU (%) on clean images and under each corruption, averaged over its severities; "
             "mean: over the corruptions.\n\n", table + "\n"]
    for r in reports:
        levels = sorted({int(s) for v in r["corruptions"].values() for s in v["severities"]})
        body = [[name.replace("_", " "), v["family"],
                 *(_pct(v["severities"].get(str(s), {}).get("mIoU")) for s in levels), _pct(v["mean"])]
                for name, v in r["corruptions"].items()]
        parts += [f"\n{r['model']}: mIoU (%) per severity (clean {_pct(r['clean']['mIoU'])}).\n\n",
                  markdown_table(["corruption", "family", *map(str, levels), "mean"], body, numbers_from=1) + "\n"]
    return "".join(parts)


def plot(reports: Sequence[Mapping[str, Any]], path: str | os.PathLike) -> None:
    """mIoU against severity (0 = clean), one line per corruption family (the mean over its
    corruptions), one panel per model."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(reports), figsize=(5.5 * len(reports), 4), squeeze=False)
    for ax, r in zip(axes[0], reports):
        clean = 100 * _or_nan(r["clean"]["mIoU"])
        for family, levels in r["families"].items():
            xs = [0, *map(int, levels)]
            ys = [clean, *(100 * _or_nan(v) for v in levels.values())]
            ax.plot(xs, ys, marker="o", label=family)
        ax.axhline(clean, color="grey", linestyle="--", linewidth=1, label="clean")
        ax.set(xlabel="severity (0: clean)", ylabel="mIoU (%)", xticks=range(6),
               title=f"{r['model']} ({r['num_examples']} images)")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120, metadata={"Software": None})
    plt.close(fig)


def write(out: str | os.PathLike, reports: Sequence[Mapping[str, Any]]) -> None:
    """The JSON, the two CSV tables, the Markdown and the plot of ``reports`` into ``out``."""
    out = pathlib.Path(out)
    _write_atomic(out / "robustness.json", json.dumps(list(reports), indent=1) + "\n")
    _write_atomic(out / "robustness.csv", _csv(*table_rows(reports)))
    _write_atomic(out / "robustness_by_severity.csv", _csv(*severity_rows(reports)))
    _write_atomic(out / "robustness.md", markdown(reports))
    plot(reports, out / "robustness.png")
