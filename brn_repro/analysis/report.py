"""results/REPORT.md: which of the paper's claims reproduced, numbers side by side."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from brn_repro.analysis.claims import CLAIMS, RULES_CLOSING, RULES_PREAMBLE, Claim, multiplicity, stats
from brn_repro.analysis.experiments import EXPERIMENTS, claim_experiments
from brn_repro.analysis.machines import machines_section
from brn_repro.analysis.protocol import deviations_section, protocol_section
from brn_repro.files import write_atomic
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


def verdict_rules() -> str:
    """The pre-registered verdict rules: the shared preamble, each claim's own rule, the close."""
    return " ".join((RULES_PREAMBLE, *(claim.rule_text for claim in CLAIMS.values()), RULES_CLOSING))


def claims_table(claims: list[Claim]) -> list[str]:
    lines = ["| # | claim | paper | ours (completed runs: mean ± std, n) | regime check (on BN) | "
             "primary comparison (paired by seed) | verdict |", "|---|---|---|---|---|---|---|"]
    for c in claims:
        regime = f"{c.regime.verdict}: {c.regime.ours}" if c.regime else "-"
        lines.append(f"| {c.key} | {c.text} | {c.paper} | {c.ours} | {regime} | {c.primary} | "
                     f"**{c.verdict}** |")
    return lines + ["", multiplicity(claims)]


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
            rows = [(c.regime, "regime check (gates the verdict)")] if c.regime else []
            rows += [(r, "primary" if r.primary else "secondary") for r in c.rows]
            lines += [f"| {r.label} | {role} | {r.paper} | {r.ours} | {r.verdict} |" for r, role in rows]
            lines.append("")
        elif c.verdict == "not run":
            lines += ["The experiment behind this claim has no runs in this aggregate.", ""]
        if c.rows:
            lines += [f"- **{name}**: {text}" for name, text in (("Robustness", c.robust), ("Power", c.power))
                      if text] + [""]
    return lines


# MABN paper (Yan et al. 2020, ResNet-50 ImageNet), top-1 error at normalization batch 2.
MABN_PAPER_ERROR = {"bn": {2: 35.22}, "brn": {2: 30.29}, "mabn": {2: 23.67}}
# The comparison of the post-2017 answers, beside BN, BRN and GN: the batch-size table's rows.
LATER_NORMS = ("bn", "brn", "gn", "mabn", "frn", "evonorm_s0", "gn_ws")


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
    distinct = sweep.drop_duplicates("run_dir") if "run_dir" in sweep else sweep
    minutes = pd.to_numeric(distinct["wall_seconds"], errors="coerce").sum() / 60
    return lines + ["", "The published numbers are ResNet-50 on ImageNet (100 - top-1 error); ours "
                    "are the profile's model and dataset: compare the shape across batch sizes, "
                    f"not the levels. The sweep's {len(distinct)} runs (norms without batch statistics: "
                    f"one run per seed serves every batch) trained for {minutes:.1f} min summed over runs.",
                    ""]


def _batch_size_rows(runs: pd.DataFrame) -> list[str]:
    """The batch-size sweep beside the Group Norm paper's and MABN's published rows."""
    norms = tuple(dict.fromkeys(("bn", "brn", "moving_average", "gn", *LATER_NORMS)))  # gn is a later norm too
    return _batch_rows(runs, "batch_size_sweep", norms,
                       [("GN paper (ImageNet, 100 - error)", GN_PAPER_ERROR),
                        ("MABN paper (ImageNet, 100 - error)", MABN_PAPER_ERROR)])


def _wall_text(wall_seconds: float | None, trained: int | None, total: int) -> str:
    if not wall_seconds:
        return ""
    if trained is None:
        return f"; wall time of the whole reproduction: {wall_seconds / 60:.1f} min"
    return (f"; wall time of the `make reproduce` call that wrote this report: "
            f"{wall_seconds / 60:.1f} min, install and data included, training {trained} of the "
            f"{total} runs (the others were already recorded)")


HISTORY = "PROTOCOL_HISTORY.md"  # hand-written: what earlier protocols gave, and what was seen when


def _history(out: Path) -> list[str]:
    """results/PROTOCOL_HISTORY.md, as the report's "Protocol history" section."""
    path = out / HISTORY
    if not path.is_file():
        return []
    return ["## Protocol history", "", f"(from [{HISTORY}]({HISTORY}))", "",
            *path.read_text().splitlines()[1:], ""]  # its own title line left out


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
        f"Generated {datetime.now(UTC):%Y-%m-%d %H:%M} UTC by `python -m brn_repro.analysis.aggregate` "
        "from the run records; every number below comes from a run that happened.", "",
        f"- profile: {profiles or '-'}; dataset: {datasets or '-'}; model: {models or '-'}",
        f"- code: {_commits(runs)}",
        f"- runs: {len(distinct)} ({', '.join(f'{v} {k}' for k, v in sorted(counts.items()))}), "
        f"{len(runs)} experiment memberships (experiments share runs); "
        f"training time summed over runs: {run_wall / 60:.1f} min"
        + _wall_text(wall_seconds, runs_trained, len(distinct)),
        "", *machines_section(runs, out), *protocol_section(runs, curves), *deviations_section(runs),
        *_history(out),
        "## Verdicts", "", "**Verdict rules (pre-registered).** " + verdict_rules(), "",
        *claims_table(claims), "",
        "## The claims in detail", "", *_claim_sections(claims, figures, out),
        "## Accuracy against the per-worker batch (the Group Norm paper's figure)", "",
        *_batch_size_rows(runs),
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
