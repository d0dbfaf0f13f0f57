"""results/REPORT.md: which of the paper's claims reproduced, numbers side by side."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from brn_repro.claims import VERDICT_RULES, Claim, stats
from brn_repro.experiments import EXPERIMENTS, claim_experiments
from brn_repro.files import write_atomic
from brn_repro.machines import machines_section
from brn_repro.norm import NORM_NAMES, norm_spec
from brn_repro.protocol import protocol_section
from brn_repro.provenance import git_commit

# Group Norm paper (Wu & He 2018), ResNet-50 ImageNet top-1 *error* by images per GPU.
GN_PAPER_ERROR = {"bn": {32: 23.6, 16: 23.7, 8: 24.8, 4: 27.3, 2: 34.7},
                  "gn": {32: 24.1, 16: 24.2, 8: 24.0, 4: 24.2, 2: 24.1},
                  "brn": {4: 26.3}}


def _commits(runs: pd.DataFrame) -> str:
    """The commit that aggregated, and those the runs were trained at (their config.yaml)."""
    distinct = runs.drop_duplicates("run_dir") if "run_dir" in runs else runs
    trained = distinct.get("git_commit", pd.Series(dtype=object)).fillna("not recorded")
    counts = ", ".join(f"`{c}` ({n})" for c, n in trained.value_counts().items())
    return f"aggregated at `{git_commit() or 'unknown'}`; runs trained at {counts or '-'}"


def claims_table(claims: list[Claim]) -> list[str]:
    lines = ["| # | claim | paper | ours (completed runs: mean ± std, n) | primary comparison "
             "(paired by seed) | verdict |", "|---|---|---|---|---|---|"]
    for c in claims:
        lines.append(f"| {c.key} | {c.text} | {c.paper} | {c.ours} | {c.primary} | **{c.verdict}** |")
    return lines


def _claim_sections(claims: list[Claim], figures: dict[str, list[Path]], out: Path) -> list[str]:
    lines = []
    experiments = claim_experiments()
    for c in claims:
        lines += [f"### Claim {c.key}: {c.verdict}", "", c.text, ""]
        experiment = experiments.get(c.key)
        for fig in figures.get(experiment, []):  # the claim's figure, from its experiment's folder
            if fig.stem == EXPERIMENTS[experiment].claim_figure:
                lines += [f"![claim {c.key}: {experiment}]({fig.relative_to(out).as_posix()})", ""]
        if c.detail:
            lines += [c.detail, ""]
        if c.rows:
            lines += ["| comparison | role | paper | ours | result |", "|---|---|---|---|---|"]
            lines += [f"| {r.label} | {'primary' if r.primary else 'secondary'} | {r.paper} | "
                      f"{r.ours} | {r.verdict} |" for r in c.rows]
            lines.append("")
        elif c.verdict == "not run":
            lines += ["The experiment behind this claim has no runs in this aggregate.", ""]
    return lines


# MABN paper (Yan et al. 2020, ResNet-50 ImageNet), top-1 error at normalization batch 2.
MABN_PAPER_ERROR = {"bn": {2: 35.22}, "brn": {2: 30.29}, "mabn": {2: 23.67}}
LATER_NORMS = tuple(name for name in NORM_NAMES if norm_spec(name).later)


def _batch_rows(runs: pd.DataFrame, experiment: str, norms: tuple[str, ...],
                published: list[tuple[str, dict[str, dict[int, float]]]]) -> list[str]:
    """Per norm: the published ImageNet row(s) (100 - top-1 error) and ours, by per-worker batch."""
    sweep = runs[runs["experiment"] == experiment]
    if sweep.empty:
        return [f"The {experiment} experiment has no runs in this aggregate (`make reproduce-full` "
                "runs it).", ""]
    batches = [32, 16, 8, 4, 2, 1]
    lines = ["| norm | source | " + " | ".join(f"b={b}" for b in batches) + " |",
             "|---|---|" + "---|" * len(batches)]
    for norm in norms:
        for source, table in published:
            if norm in table:
                paper = [f"{100 - table[norm][b]:.1f}" if b in table[norm] else "-" for b in batches]
                lines.append(f"| {norm} | {source} | " + " | ".join(paper) + " |")
        ours = []
        for b in batches:
            cell = sweep[(sweep["norm.name"] == norm) & (sweep["data.per_worker_batch"] == b)]
            ours.append(stats(cell).text() if len(cell) else "-")
        lines.append(f"| {norm} | ours | " + " | ".join(ours) + " |")
    return lines + ["", "The published numbers are ResNet-50 on ImageNet (100 - top-1 error); ours "
                    "are the profile's model and dataset: compare the shape across batch sizes, "
                    "not the levels.", ""]


def _group_norm_rows(runs: pd.DataFrame) -> list[str]:
    return _batch_rows(runs, "batch_size_sweep", ("bn", "gn", "brn", "ln", "moving_average"),
                       [("GN paper (ImageNet, 100 - error)", GN_PAPER_ERROR)])


def _later_rows(runs: pd.DataFrame) -> list[str]:
    if runs[runs["experiment"] == "batch_size_sweep_extended"].empty:
        return []
    return ["## Later answers: MABN, FRN, EvoNorm-S0, GN + WS", "",
            "`batch_size_sweep_extended` (`make reproduce-full`): the post-2017 normalizations "
            "next to BN, BRN and GN, global batch fixed. MABN's published row is its paper's "
            "Table (normalization batch 2).", "",
            *_batch_rows(runs, "batch_size_sweep_extended", LATER_NORMS,
                         [("GN paper (ImageNet, 100 - error)", GN_PAPER_ERROR),
                          ("MABN paper (ImageNet, 100 - error)", MABN_PAPER_ERROR)])]


def _wall_text(wall_seconds: float | None, trained: int | None, total: int) -> str:
    if not wall_seconds:
        return ""
    if trained is None:
        return f"; wall time of the whole reproduction: {wall_seconds / 60:.1f} min"
    return (f"; wall time of the `make reproduce` call that wrote this report: "
            f"{wall_seconds / 60:.1f} min, install and data included, training {trained} of the "
            f"{total} runs (the others were already recorded)")


def write_report(out: Path, runs: pd.DataFrame, summaries: dict[str, pd.DataFrame],
                 claims: list[Claim], figures: dict[str, list[Path]],
                 wall_seconds: float | None, runs_trained: int | None = None,
                 curves: pd.DataFrame | None = None) -> Path:
    profiles = ", ".join(sorted(str(p) for p in runs.get("profile_name", pd.Series()).dropna().unique()))
    datasets = ", ".join(sorted(runs.get("dataset.name", pd.Series()).dropna().astype(str).unique()))
    models = ", ".join(sorted(runs.get("model.name", pd.Series()).dropna().astype(str).unique()))
    # A run shared by several experiments appears once per experiment in ``runs``.
    distinct = runs.drop_duplicates("run_dir") if "run_dir" in runs else runs
    counts = distinct["status"].value_counts().to_dict()
    run_wall = pd.to_numeric(distinct["wall_seconds"], errors="coerce").sum()
    lines = [
        "# Batch Renormalization: reproduction report", "",
        f"Generated {datetime.now(UTC):%Y-%m-%d %H:%M} UTC by `python -m brn_repro.aggregate` "
        "from the run records; every number below comes from a run that happened.", "",
        f"- profile: {profiles or '-'}; dataset: {datasets or '-'}; model: {models or '-'}",
        f"- code: {_commits(runs)}",
        f"- runs: {len(distinct)} ({', '.join(f'{v} {k}' for k, v in sorted(counts.items()))}), "
        f"{len(runs)} experiment memberships (experiments share runs); "
        f"training time summed over runs: {run_wall / 60:.1f} min"
        + _wall_text(wall_seconds, runs_trained, len(distinct)),
        "", *machines_section(runs, out), *protocol_section(runs, curves),
        "## Verdicts", "", "**Verdict rules (pre-registered).** " + VERDICT_RULES, "",
        *claims_table(claims), "",
        "## The claims in detail", "", *_claim_sections(claims, figures, out),
        "## Group Norm paper's batch-size row, for comparison", "", *_group_norm_rows(runs),
        *_later_rows(runs),
        "## Experiments", "",
    ]
    for experiment, summary in summaries.items():
        lines += [f"### {experiment}", "", f"Per-condition summary: [`{experiment}/summary.csv`]"
                  f"({experiment}/summary.csv) ({int(summary['n'].sum())} completed, "
                  f"{int(summary['n_diverged'].sum())} diverged runs).", ""]
        lines += [f"![{fig.stem}]({fig.relative_to(out).as_posix()})" for fig in figures.get(experiment, [])]
        lines.append("")
    path = out / "REPORT.md"
    write_atomic(path, "\n".join(lines) + "\n")
    return path
