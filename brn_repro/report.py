"""results/REPORT.md: which of the paper's claims reproduced, numbers side by side."""

from __future__ import annotations

import os
import platform
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import torch

from brn_repro.claims import Claim, stats

RULE = (
    "A claim that one condition beats another is **reproduced** when the difference of "
    "mean final test accuracies (over seeds) has the claimed sign and exceeds two standard "
    "errors (SE = sqrt(s_a²/n_a + s_b²/n_b)); **not reproduced** when the difference has "
    "the opposite sign and exceeds two SE; **inconclusive** otherwise, including when a side "
    "has fewer than two completed seeds. A claim that one condition *matches* another is "
    "reproduced when it is less than one point or two SE below it. Claim 4 is reproduced when "
    "more than half of the moving-average runs diverge (NaN/inf loss) and not reproduced when "
    "none does. Accuracies are top-1 % on the test set with the model in inference mode "
    "(moving statistics), at the last step."
)

# Group Norm paper (Wu & He 2018), ResNet-50 ImageNet top-1 *error* by images per GPU.
GN_PAPER_ERROR = {"bn": {32: 23.6, 16: 23.7, 8: 24.8, 4: 27.3, 2: 34.7},
                  "gn": {32: 24.1, 16: 24.2, 8: 24.0, 4: 24.2, 2: 24.1},
                  "brn": {4: 26.3}}


def _machine() -> str:
    return (f"{platform.machine()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}, "
            f"torch {torch.__version__}" + (", CUDA" if torch.cuda.is_available() else ", CPU only"))


def _claims_table(claims: list[Claim]) -> list[str]:
    lines = ["| # | claim | paper | ours (mean ± std, n seeds) | verdict |", "|---|---|---|---|---|"]
    for c in claims:
        lines.append(f"| {c.key} | {c.text} | {c.paper} | {c.ours} | **{c.verdict}** |")
    return lines


def _claim_sections(claims: list[Claim]) -> list[str]:
    lines = []
    for c in claims:
        lines += [f"### Claim {c.key}: {c.verdict}", "", c.text, ""]
        if c.detail:
            lines += [c.detail, ""]
        if c.rows:
            lines += ["| comparison | paper | ours | verdict |", "|---|---|---|---|"]
            lines += [f"| {a} | {b} | {o} | {v} |" for a, b, o, v in c.rows]
            lines.append("")
        elif c.verdict == "not run":
            lines += ["The experiment behind this claim has no runs in this aggregate.", ""]
    return lines


def _group_norm_rows(runs: pd.DataFrame) -> list[str]:
    sweep = runs[runs["experiment"] == "batch_size_sweep"]
    if sweep.empty:
        return ["The batch_size_sweep experiment has no runs in this aggregate.", ""]
    batches = [32, 16, 8, 4, 2, 1]
    lines = ["| norm | source | " + " | ".join(f"b={b}" for b in batches) + " |",
             "|---|---|" + "---|" * len(batches)]
    for norm in ("bn", "gn", "brn", "ln", "moving_average"):
        if norm in GN_PAPER_ERROR:
            paper = [f"{100 - GN_PAPER_ERROR[norm][b]:.1f}" if b in GN_PAPER_ERROR[norm] else "-"
                     for b in batches]
            lines.append(f"| {norm} | GN paper (ImageNet, 100 - error) | " + " | ".join(paper) + " |")
        ours = []
        for b in batches:
            cell = sweep[(sweep["norm.type"] == norm) & (sweep["data.per_worker_batch"] == b)]
            ours.append(stats(cell).text() if len(cell) else "-")
        lines.append(f"| {norm} | ours | " + " | ".join(ours) + " |")
    return lines + ["", "The GN paper's numbers are ResNet-50 on ImageNet; ours are the profile's "
                    "model and dataset: compare the shape across batch sizes, not the levels.", ""]


def write_report(out: Path, runs: pd.DataFrame, summaries: dict[str, pd.DataFrame],
                 claims: list[Claim], figures: dict[str, list[Path]],
                 wall_seconds: float | None) -> Path:
    profiles = ", ".join(sorted(str(p) for p in runs.get("profile_name", pd.Series()).dropna().unique()))
    datasets = ", ".join(sorted(runs.get("dataset.name", pd.Series()).dropna().astype(str).unique()))
    models = ", ".join(sorted(runs.get("model.name", pd.Series()).dropna().astype(str).unique()))
    counts = runs["status"].value_counts().to_dict()
    run_wall = pd.to_numeric(runs["wall_seconds"], errors="coerce").sum()
    lines = [
        "# Batch Renormalization: reproduction report", "",
        f"Generated {datetime.now(UTC):%Y-%m-%d %H:%M} UTC by `python -m brn_repro.aggregate` "
        "from the run records; every number below comes from a run that happened.", "",
        f"- profile: {profiles or '-'}; dataset: {datasets or '-'}; model: {models or '-'}",
        f"- machine: {_machine()}",
        f"- runs: {len(runs)} ({', '.join(f'{v} {k}' for k, v in sorted(counts.items()))}); "
        f"training time summed over runs: {run_wall / 60:.1f} min"
        + (f"; wall time of the whole reproduction: {wall_seconds / 60:.1f} min" if wall_seconds else ""),
        "", "## Verdicts", "", *_claims_table(claims), "", "**Rule.** " + RULE, "",
        "## The claims in detail", "", *_claim_sections(claims),
        "## Group Norm paper's batch-size row, for comparison", "", *_group_norm_rows(runs),
        "## Experiments", "",
    ]
    for experiment, summary in summaries.items():
        lines += [f"### {experiment}", "", f"Per-condition summary: [`{experiment}/summary.csv`]"
                  f"({experiment}/summary.csv) ({int(summary['n'].sum())} completed, "
                  f"{int(summary['n_diverged'].sum())} diverged runs).", ""]
        lines += [f"![{fig.stem}]({fig.relative_to(out).as_posix()})" for fig in figures.get(experiment, [])]
        lines.append("")
    path = out / "REPORT.md"
    tmp = path.with_name("REPORT.md.tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(path)
    return path
