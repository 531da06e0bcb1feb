"""Tables and figures for a sweep (``python -m nucleiseg.report multirun_outputs/<date>/<time>``).

Reads every ``results.json`` below the sweep dir and writes ``report.md``, ``report.csv``
and ``report.tex`` beside them: per dataset, rows ``<backbone>`` (stage 1 alone) and
``<backbone> †`` (two-stage), precision / recall / Dice / IoU as mean ± std over seeds,
the Dice change † brings, and the paper's published Dice; for a study, two-stage minus
each control (``control_comparisons``) and every arm on its own with its training cost
(``arm_summary``). Runs that failed or did not
finish are listed, not dropped. A figure per dataset stacks the backbones as rows
(``figure_<dataset>.png``), as the paper's Figures 2 and 3 do.
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections import defaultdict
from math import comb
from pathlib import Path
from typing import Any

import numpy as np

from nucleiseg.analysis.arm_summary import arm_rows
from nucleiseg.analysis.control_comparisons import (
    CONTROLS,
    FEW_SEEDS,
    RESAMPLES,
    comparisons,
    crossed_bootstrap,
    holm,
    mean_std,
    p_value_floor,
)
from nucleiseg.analysis.sweep_runs import Sweep, dataset_label, find_runs, on_paper_split

__all__ = ["CONTROLS", "comparisons", "crossed_bootstrap", "dataset_label", "find_runs", "holm",
           "report"]  # fmt: skip

METRICS = ("precision", "recall", "dice", "iou")
BACKBONE_ORDER = ("unet", "micronet", "unetpp", "smp_unet", "smp_unetpp")
BACKBONE_NAMES = {
    "unet": "U-Net",
    "micronet": "Micro-Net",
    "unetpp": "U-Net++",
    "smp_unet": "U-Net (smp, ResNet)",
    "smp_unetpp": "U-Net++ (smp, ResNet)",
}
# Published Dice (stage 1 alone, two-stage) from the paper's tables.
PAPER_DICE = {
    "lizard": {"unet": (0.786, 0.806), "micronet": (0.780, 0.790), "unetpp": (0.757, 0.769)},
    "tnbc": {"unet": (0.827, 0.832), "micronet": (0.789, 0.804), "unetpp": (0.649, 0.721)},
}
# smp's ResNet networks are set beside the paper's network of their family (marked °).
PAPER_COUNTERPART = {"smp_unet": "unet", "smp_unetpp": "unetpp"}


MAIN_STAGES = ("two_stage", "base")


def format_p(p: float, floor: float) -> str:
    """A p-value to three decimals, never shown as 0: at the resolution it reads ``<= floor``."""
    return f"≤ {floor:.3f}" if p <= floor + 1e-12 else f"{p:.3f}"


def comparison_markdown(rows: list[dict[str, Any]], resamples: int = RESAMPLES) -> list[str]:
    if not rows:
        return []
    lines = [
        "### does stage 2 help? two-stage minus control",
        "",
        "| dataset | model | control | seeds | Δ Dice per image (95% CI) | Holm p "
        "| seed-level p | Δ detection recall (95% CI) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    refused = [r for r in rows if "refused" in r]
    scored = [r for r in rows if "refused" not in r]
    holm_floor = min(1.0, len(scored) * p_value_floor(resamples))
    for r in scored:
        dice, recall = (f"{i.mean:+.3f} [{i.low:+.3f}, {i.high:+.3f}]"
                        for i in (r["dice"], r["det_recall"]))  # fmt: skip
        mark = " ✓" if r["holm_survives"] else ""
        name = BACKBONE_NAMES.get(r["backbone"], r["backbone"])
        seeds = f"{r['seeds']} ‡" if r["seeds"] == 1 else str(r["seeds"])
        seeds += " §" if 1 < r["seeds"] <= FEW_SEEDS else ""
        seed_p = f"{r['seed_p']:.3f}" if "seed_p" in r else "–"
        holm_p = format_p(r["holm_p"], holm_floor)
        lines.append(f"| {r['dataset']} | {name} | {r['control']} | {seeds} | {dice} | "
                     f"{holm_p}{mark} | {seed_p} | {recall} |")  # fmt: skip
    survivors = sum(r["holm_survives"] for r in scored)
    one_seed = any(r["seeds"] == 1 for r in scored)
    few = [r["seeds"] for r in scored if 1 < r["seeds"] <= FEW_SEEDS]
    lines += ["", f"Bootstrap over training seeds and test images, resampled independently "
              f"(scipy.stats.bootstrap, {resamples} resamples, percentile intervals): the "
              f"intervals include seed-to-seed training variance. {len(scored)} Dice "
              f"comparisons; Holm's correction for all {len(scored)}: {survivors} survive at "
              f"family-wise α = 0.05 (✓). A bootstrap p-value cannot be smaller than "
              f"2/(B+1) = {p_value_floor(resamples):.4f}, so a Holm p of "
              f"{holm_floor:.3f} over {len(scored)} comparisons is the smallest these "
              f"resamples resolve (shown ≤ {holm_floor:.3f}). Seed-level p: the exact "
              f"sign-flip test over the per-seed mean differences (two-sided; its smallest "
              f"value with n seeds is 2/2^n), uncorrected. stage1 = the same run's stage 1 "
              f"alone."
              + (f" § = {min(few)} seeds or so: the bootstrap over seeds draws from few "
                 f"distinct sets ({min(few)} seeds: {comb(2 * min(few) - 1, min(few))} "
                 f"multisets), and no seed-level test can reach "
                 f"{2 / 2 ** min(few):.3f}; read these intervals as test-image "
                 f"uncertainty plus a rough view of training variance."
                 if few else "")
              + (" ‡ = one seed so far: its interval resamples test images only, with no "
                 "training variance in it, so it is narrower than a finished row's."
                 if one_seed else ""), ""]  # fmt: skip
    for r in refused:
        name = BACKBONE_NAMES.get(r["backbone"], r["backbone"])
        lines.append(f"- not paired: {r['dataset']} {name} vs {r['control']}: {r['refused']}")
    return lines + ([""] if refused else [])


def build_rows(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per dataset x backbone x {stage 1, two-stage}, aggregated over seeds."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for run in runs:
        groups[(run.get("dataset_label", run["dataset"]), run["backbone"])].append(run)

    def order(key: tuple[str, str]) -> tuple:
        dataset, backbone = key
        rank = BACKBONE_ORDER.index(backbone) if backbone in BACKBONE_ORDER else 99
        return dataset, rank, backbone

    rows = []
    for dataset, backbone in sorted(groups, key=order):
        group = groups[(dataset, backbone)]
        paper_backbone = PAPER_COUNTERPART.get(backbone, backbone)
        paper = PAPER_DICE.get(group[0]["dataset"], {}).get(paper_backbone)
        if not on_paper_split(group[0]):
            paper = None  # the paper's figures are for its image split only
        stage1_dice = {
            r["seed"]: r["test"]["stage1"]["dice"] for r in group if "stage1" in r["test"]
        }
        for output, dagger, paper_dice in (
            ("stage1", False, paper[0] if paper else None),
            ("two_stage", True, paper[1] if paper else None),
        ):
            tested = [r for r in group if output in r["test"]]
            if not tested:
                continue
            row: dict[str, Any] = {
                "dataset": dataset,
                "backbone": backbone,
                "model": BACKBONE_NAMES.get(backbone, backbone) + (" †" if dagger else ""),
                "seeds": len(tested),
                "paper_dice": paper_dice,
                "paper_counterpart": paper_backbone != backbone,
            }
            for metric in METRICS:
                row[metric] = mean_std([r["test"][output][metric] for r in tested])
            if dagger:
                paired = [
                    r["test"]["two_stage"]["dice"] - stage1_dice[r["seed"]]
                    for r in tested
                    if r["seed"] in stage1_dice
                ]
                row["dice_change"] = mean_std(paired) if paired else None
                if paper:
                    row["paper_change"] = paper[1] - paper[0]
            rows.append(row)
    return rows


def _fmt(
    value: tuple[float, float] | None, seeds: int, signed: bool = False, digits: int = 3
) -> str:
    if value is None:
        return "–"
    mean, std = value
    text = f"{mean:+.{digits}f}" if signed else f"{mean:.{digits}f}"
    return f"{text} ± {std:.{digits}f}" if seeds > 1 else text


def arm_markdown(rows: list[dict[str, Any]]) -> list[str]:
    """The report's "every arm on its own" table (rows from ``arm_summary.arm_rows``)."""
    if not rows:
        return []
    lines = ["### every arm on its own", "",
             "| dataset | model | arm | seeds | Dice per image | Dice, pooled pixels | epochs "
             "| minutes |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        n = r["seeds"]
        lines.append(f"| {r['dataset']} | {BACKBONE_NAMES.get(r['backbone'], r['backbone'])} | "
                     f"{r['arm']} | {n} | {_fmt(r['dice_per_image'], n)} | "
                     f"{_fmt(r['dice_pixels'], n)} | {_fmt(r['epochs'], n, digits=0)} | "
                     f"{_fmt(r['minutes'], n, digits=1)} |")  # fmt: skip
    lines += ["", "Mean ± std over seeds. Dice per image = the mean of each test image's "
              "Dice (what the comparisons above pair); pooled = Dice of all test pixels "
              "together (the first table's). Epochs and minutes: every phase that trained "
              "the arm's model, phase 1 included where it is shared (stage1 = phase 1 alone); "
              "minutes are wall-clock on the machine that ran it.", ""]  # fmt: skip
    return lines


def markdown(rows: list[dict[str, Any]], sweep: Sweep) -> str:
    lines = []
    for dataset in dict.fromkeys(r["dataset"] for r in rows):
        lines += [
            f"### {dataset}",
            "",
            "| model | seeds | precision | recall | Dice | IoU | Δ Dice (†) | paper Dice "
            "| paper Δ |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in (r for r in rows if r["dataset"] == dataset):
            n = r["seeds"]
            change = _fmt(r.get("dice_change"), n, signed=True) if "dice_change" in r else ""
            paper_change = f"{r['paper_change']:+.3f}" if "paper_change" in r else ""
            paper = f"{r['paper_dice']:.3f}" if r["paper_dice"] is not None else "–"
            if r["paper_dice"] is not None and r["paper_counterpart"]:
                paper += " °"
            cells = [_fmt(r[m], n) for m in METRICS]
            row = [r["model"], str(n), *cells, change, paper, paper_change]
            lines.append("| " + " | ".join(row) + " |")
        lines.append("")
    if sweep.incomplete:
        lines += ["### failed or unfinished runs", ""]
        lines += [f"- `{job}`: {why}" for job, why in sweep.incomplete]
        lines.append("")
    if sweep.unreadable:
        lines += ["### unreadable or foreign results.json (left out)", ""]
        lines += [f"- `{path}`: {why}" for path, why in sweep.unreadable]
        lines.append("")
    lines.append(
        "† = with the enhancement network (two-stage). Mean ± std over seeds; "
        "pixel metrics micro-averaged over the test split (pooled pixels, not a mean of "
        "per-image Dice). ° = the paper's network of that family (its classic U-Net or "
        "U-Net++), not the same network."
    )
    return "\n".join(lines) + "\n"


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        header = ["dataset", "backbone", "model", "seeds"]
        for metric in METRICS:
            header += [f"{metric}_mean", f"{metric}_std"]
        header += ["dice_change_mean", "dice_change_std", "paper_dice"]
        writer.writerow(header)
        for r in rows:
            line = [r["dataset"], r["backbone"], r["model"], r["seeds"]]
            for metric in METRICS:
                line += [f"{r[metric][0]:.6f}", f"{r[metric][1]:.6f}"]
            change = r.get("dice_change")
            line += [f"{change[0]:.6f}", f"{change[1]:.6f}"] if change else ["", ""]
            line.append("" if r["paper_dice"] is None else r["paper_dice"])
            writer.writerow(line)


def latex(rows: list[dict[str, Any]]) -> str:
    out = [
        "\\begin{tabular}{llccccc}",
        "\\toprule",
        "Dataset & Model & Precision & Recall & Dice & IoU & Paper Dice \\\\",
        "\\midrule",
    ]
    for r in rows:
        model = r["model"].replace(" †", "$^\\dagger$")
        cells = [_fmt(r[m], r["seeds"]).replace("±", "$\\pm$") for m in METRICS]
        paper = f"{r['paper_dice']:.3f}" if r["paper_dice"] is not None else "--"
        out.append(f"{r['dataset']} & {model} & {' & '.join(cells)} & {paper} \\\\")
    out += ["\\bottomrule", "\\end{tabular}"]
    return "\n".join(out) + "\n"


def sweep_figures(runs: list[dict[str, Any]], out_dir: Path, image_index: int = 0) -> list[Path]:
    """Per dataset: one row per backbone (first seed), the same test image in every row."""
    from nucleiseg.viz.overlays import panels, plot_rows

    written = []
    by_dataset: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
    for run in sorted(runs, key=lambda r: r["seed"]):
        by_dataset[run.get("dataset_label", run["dataset"])].setdefault(run["backbone"], run)
    for dataset, by_backbone in sorted(by_dataset.items()):
        rows = []
        for backbone in sorted(
            by_backbone, key=lambda b: BACKBONE_ORDER.index(b) if b in BACKBONE_ORDER else 99
        ):
            path = Path(by_backbone[backbone]["run_dir"]) / "figures" / "predictions.npz"
            if not path.is_file():
                continue
            data = np.load(path)
            if "two_stage" not in data or "stage1" not in data:
                continue
            i = min(image_index, len(data["images"]) - 1)
            rows.append(
                (
                    BACKBONE_NAMES.get(backbone, backbone),
                    panels(
                        data["images"][i],
                        data["masks"][i],
                        data["stage1"][i] >= 0.5,
                        data["two_stage"][i] >= 0.5,
                    ),
                )
            )
        if rows:
            slug = dataset.replace(" (", "_").replace(" split)", "").replace(" ", "_")
            target = out_dir / f"figure_{slug}.png"
            plot_rows(rows, target)
            written.append(target)
    return written


def stop_summary(runs: list[dict[str, Any]]) -> list[str]:
    """How the phases of the finished runs ended: a converged study wants early stopping
    everywhere, so the phases the epoch cap ended are named."""
    phases = [(run, p) for run in runs for p in run.get("phases", [])]
    if not phases:
        return []
    capped = [(run, p) for run, p in phases if p.get("stop_reason") == "max_epochs"]
    early = sum(p.get("stop_reason") == "early_stopping" for _, p in phases)
    lines = ["### how the phases ended", "",
             f"{len(phases)} phases in {len(runs)} finished runs: {early} ended by early "
             f"stopping, {len(capped)} by the epoch cap, {len(phases) - early - len(capped)} "
             "otherwise (a shared phase taken from another run counts in each run)."]  # fmt: skip
    for run, phase in capped:
        lines.append(f"- epoch cap: {run.get('run_dir', '?')} phase '{phase.get('name')}' "
                     f"({phase.get('epochs')} epochs)")  # fmt: skip
    return [*lines, ""]


def report(sweep_dir: str | Path) -> str:
    """Write the report files into ``sweep_dir``; return the markdown table."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise FileNotFoundError(f"sweep dir '{sweep_dir}' does not exist")
    sweep = find_runs(sweep_dir)
    if not sweep.finished and not sweep.incomplete and not sweep.unreadable:
        raise FileNotFoundError(
            f"no runs under '{sweep_dir}': expected job dirs with results.json "
            "(python -m nucleiseg.train -m ...)"
        )
    main_runs = [r for r in sweep.finished if r.get("stage", "two_stage") in MAIN_STAGES]
    rows = build_rows(main_runs)
    text = markdown(rows, sweep) + "\n".join(
        [
            "",
            *comparison_markdown(comparisons(sweep.finished)),
            *arm_markdown(arm_rows(sweep.finished)),
            *stop_summary(sweep.finished),
        ]
    )
    (sweep_dir / "report.md").write_text(f"# nucleiseg report: {sweep_dir}\n\n{text}")
    write_csv(rows, sweep_dir / "report.csv")
    (sweep_dir / "report.tex").write_text(latex(rows))
    sweep_figures(main_runs, sweep_dir)
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Tables and figures for a sweep directory.")
    parser.add_argument("sweep_dir", help="e.g. multirun_outputs/2026-11-24/10-00-00")
    args = parser.parse_args(argv)
    try:
        print(report(args.sweep_dir))
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"report.md, report.csv, report.tex written to {args.sweep_dir}")
    return 0
