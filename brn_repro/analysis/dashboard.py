"""The W&B dashboard, built in code by ``python -m brn_repro.analysis.aggregate --wandb``.

From the same aggregate that writes results/, three things go to the W&B project:

* an ``aggregate`` job run holding each experiment's summary table and figures, and
  results/ as a versioned artifact ``results-<profile>`` (its metadata: the commit and
  the verdicts);
* a saved **workspace**, ``brn-repro <profile>``: the profile's runs grouped by W&B group
  (``<profile>/<experiment>``), normalization and per-worker batch, and one section per
  experiment (test accuracy against the step, the final accuracy against the per-worker
  batch where the experiment sweeps it, BRN's clip fractions, the moving averages' error);
* a **report** mirroring results/REPORT.md: the verdict table, then one section per claim
  with its panel grid over exactly the runs tagged with the claim's experiment (a
  workspace's panels share one run set; a report's grids each have their own, so the
  claims' runs are separated there).

An experiment's panels are the W&B counterparts of its figures in results/, as its
description lists them (``brn_repro.analysis.experiments``).

Online (credentials), all three are saved. Offline, the aggregate run and its artifact go
to an offline run that ``wandb sync`` uploads with the training runs; the workspace and
report are built and validated the same way, and the command says what it would save.
The workspace and report need the optional extra ``[wandb-report]`` (``wandb-workspaces``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from brn_repro.analysis.experiments import claim_experiments
from brn_repro.analysis.experiments import figures as figures_of
from brn_repro.loggers import PRIVATE_SETTINGS, resolve_wandb_mode
from brn_repro.records import read_summary

# Runs of a profile are grouped by these, in order, in the workspace and the report. Config
# keys are named by their path in the nested config WandbLogger logs; wandb_workspaces adds
# W&B's ``.value`` where the server wants it (``config:data.value.per_worker_batch``).
GROUP_BY = ("norm.name", "data.per_worker_batch", "sampler.name")
# A top-level key: a filter's config key is sent without ``.value``, and W&B appends it at the end.
PROFILE_KEY = "profile_name"
OFFLINE_ENTITY = "your-entity"  # offline, objects are validated against a stand-in entity


@dataclass(frozen=True)
class PanelSpec:
    """One chart, independent of wandb_workspaces (so tests and offline runs see it too)."""
    title: str
    y: tuple[str, ...]
    kind: str = "line"  # line: y against the training step | scatter: final y against x
    x: str = "step"
    log_x: bool = False


# A figure's chart (plots.FIGURES names the figures), in the order a section shows them;
# the r_max x d_max heatmap has no W&B chart.
PANELS = {
    "test_acc_vs_step": PanelSpec("test accuracy (%)", ("test_acc",)),
    "train_acc_vs_step": PanelSpec("train accuracy (%), inference mode", ("train_acc",)),
    "acc_vs_per_worker_batch": PanelSpec("final test accuracy (%) vs per-worker batch",
                                         ("test_acc.last",), kind="scatter",
                                         x="data.per_worker_batch", log_x=True),
    "brn_corrections": PanelSpec("BRN: fraction of r, d clipped",
                                 ("norm/mean/r_clip_frac", "norm/mean/d_clip_frac")),
    "weight_norm_vs_step": PanelSpec("weight norm", ("weight_norm",)),
    "loss_vs_step": PanelSpec("training loss", ("loss",)),
    "ema_error_vs_step": PanelSpec("moving averages' error (relative)", ("ema_error/mean",)),
}


def experiment_panels(experiment: str, frame: pd.DataFrame) -> list[PanelSpec]:
    """The charts of ``experiment``'s figures (``frame``: its rows of runs.csv); BRN's
    only where it has BRN runs, as in results/."""
    wanted = set(figures_of(experiment))
    if not (frame.get("norm.name", pd.Series(dtype=str)) == "brn").any():
        wanted.discard("brn_corrections")
    return [panel for name, panel in PANELS.items() if name in wanted]


def _require_workspaces():
    try:
        import wandb_workspaces.reports.v2 as wr
        import wandb_workspaces.workspaces as ws
    except ImportError:
        raise ImportError("the W&B workspace and report need the optional extra: "
                          "pip install -e '.[wandb-report]'") from None
    return ws, wr


def _report_panel(spec: PanelSpec, wr):
    if spec.kind == "scatter":
        return wr.ScatterPlot(title=spec.title, x=wr.Config(spec.x), y=wr.SummaryMetric(spec.y[0]),
                              log_x=spec.log_x)
    return wr.LinePlot(title=spec.title, x=spec.x, y=list(spec.y))


def build_workspace(entity: str, project: str, profile: str, experiments: dict[str, list[PanelSpec]]):
    """The saved workspace: the profile's runs, one open section per experiment."""
    ws, wr = _require_workspaces()
    sections = [ws.Section(name=name, is_open=True, panels=[_report_panel(p, wr) for p in specs])
                for name, specs in experiments.items()]
    return ws.Workspace(
        entity=entity, project=project, name=f"brn-repro {profile}", sections=sections,
        settings=ws.WorkspaceSettings(x_axis="step", max_runs=200),
        runset_settings=ws.RunsetSettings(
            filters=ws.And(ws.Config(PROFILE_KEY) == profile),
            groupby=[ws.Metric("Group"), *(ws.Config(key) for key in GROUP_BY)]),
    )


def build_report(entity: str, project: str, profile: str, claims: list, verdict_table: list[str],
                 experiments: dict[str, list[PanelSpec]], online: bool = True):
    """The W&B report mirroring REPORT.md: verdicts, then a panel grid per claim. Each
    grid's run set names the project only ``online`` (naming it makes validation look the
    project up; unnamed, a run set shows the report's own project)."""
    ws, wr = _require_workspaces()
    blocks: list[Any] = [
        wr.H1(text=f"Batch Renormalization, reproduced ({profile} profile)"),
        wr.P(text="Verdicts of the paper's claims, paired by seed (results/REPORT.md holds the "
                  "protocol, the tests and every number)."),
        wr.MarkdownBlock(text="\n".join(verdict_table)),
    ]
    deciding = claim_experiments()
    for claim in claims:
        experiment = deciding.get(claim.key)
        blocks += [wr.H2(text=f"Claim {claim.key}: {claim.verdict}"),
                   wr.MarkdownBlock(text=f"{claim.text}\n\n{claim.primary}")]
        if experiment in experiments:
            runset = wr.Runset(entity=entity if online else "", project=project if online else "",
                               name=experiment,
                               filters=ws.And(ws.Tags().isin([experiment]),
                                              ws.Config(PROFILE_KEY) == profile),
                               groupby=[f"config.{key}" for key in GROUP_BY])
            blocks.append(wr.PanelGrid(runsets=[runset],
                                       panels=[_report_panel(p, wr) for p in experiments[experiment]]))
    return wr.Report(project=project, entity=entity, title=f"brn-repro: {profile} reproduction",
                     description="Which of Batch Renormalization's claims reproduced",
                     blocks=blocks)


def _retag(api, entity: str, project: str, runs: pd.DataFrame) -> int:
    """Online: each W&B run tagged with every experiment its record serves (a run trained
    for one experiment and shared by another learns the second here). The W&B run is the
    one of the record's finished training (its summary's ``attempt_id``)."""
    changed = 0
    for run_dir, rows in runs.groupby("run_dir"):
        attempt_id = (read_summary(Path(run_dir) / "summary.json") or {}).get("attempt_id")
        if attempt_id is None:  # unfinished, or trained before W&B ids were attempt ids
            continue
        try:
            run = api.run(f"{entity}/{project}/{attempt_id}")
        except Exception:  # noqa: BLE001 (wandb raises several kinds for "no such run")
            continue
        tags = sorted(set(run.tags) | set(rows["experiment"]))
        if tags != sorted(run.tags):
            run.tags = tags
            run.update()
            changed += 1
    return changed


def publish(out: Path, runs_root: Path, runs: pd.DataFrame, summaries: dict[str, pd.DataFrame],
            figures: dict[str, list[Path]], claims: list, verdict_table: list[str],
            project: str = "brn-repro", entity: str | None = None, mode: str = "auto") -> str:
    """Log the aggregate (tables, figures, results/ as an artifact) and save the workspace
    and report; returns what was done (or, offline, what would be), one line each."""
    import wandb

    from brn_repro.provenance import git_commit

    mode = resolve_wandb_mode(mode, run_dir=runs_root, announce=False)
    profiles = sorted(runs["profile_name"].dropna().astype(str).unique()) if "profile_name" in runs else []
    profile = profiles[0] if len(profiles) == 1 else "+".join(profiles) or "default"
    lines = []
    run = wandb.init(project=project, entity=entity, job_type="aggregate", name=f"aggregate-{profile}",
                     group=f"{profile}/aggregate", dir=str(runs_root), mode=mode,
                     reinit="finish_previous",
                     settings=wandb.Settings(quiet=True, console="off", **PRIVATE_SETTINGS))
    for experiment, summary in summaries.items():
        run.log({f"{experiment}/summary": wandb.Table(dataframe=summary)})
        for fig in figures.get(experiment, []):
            if fig.suffix == ".png":
                run.log({f"{experiment}/{fig.stem}": wandb.Image(str(fig))})
    artifact = wandb.Artifact(f"results-{profile}", type="results",
                              description="results/ of brn-repro's reproduction (REPORT.md, "
                                          "figures, runs.csv, curves.csv)",
                              metadata={"git_commit": git_commit(),
                                        "verdicts": {c.key: c.verdict for c in claims}})
    artifact.add_dir(str(out))
    run.log_artifact(artifact)
    run.finish()
    where = f"{entity or '<default entity>'}/{project}"
    lines.append(f"wandb: aggregate run and artifact results-{profile} ({mode}) -> {where}")

    experiments = {name: experiment_panels(name, runs[runs["experiment"] == name])
                   for name in sorted(summaries)}
    try:
        target = entity or (wandb.Api().default_entity if mode == "online" else None) or OFFLINE_ENTITY
        workspace = build_workspace(target, project, profile, experiments)
        report = build_report(target, project, profile, claims, verdict_table, experiments,
                              online=mode == "online")
        workspace._to_model(), report._to_model()  # validates both, online or not
    except ImportError as err:
        return "\n".join([*lines, f"wandb: no workspace or report: {err}"])
    panels = sum(len(s.panels) for s in workspace.sections)
    what = (f"workspace '{workspace.name}' ({len(workspace.sections)} sections, {panels} panels) "
            f"and report '{report.title}' ({len(report.blocks)} blocks)")
    if mode != "online":
        lines.append(f"wandb: offline; would save {what} to {target}/{project}; run "
                     f"`python -m brn_repro.analysis.aggregate --runs {runs_root} --out {out} --wandb` "
                     "with credentials to save them")
        return "\n".join(lines)
    workspace.save()
    report.save()
    retagged = _retag(wandb.Api(), target, project, runs)
    lines.append(f"wandb: saved {what}: {workspace.url} | {report.url}; "
                 f"{retagged} runs re-tagged with their experiments")
    return "\n".join(lines)


def offline_sync_line(runs_root: Path) -> str | None:
    """The one ``wandb sync`` line for every offline run under ``runs_root`` (training runs
    and the aggregate), or None when there are none."""
    runs_root = Path(runs_root)
    trained = list(runs_root.glob("*/wandb/offline-run-*"))
    aggregate = list(runs_root.glob("wandb/offline-run-*"))
    if not trained and not aggregate:
        return None
    paths = " ".join(p for p, found in ((f"{runs_root}/*/wandb/offline-run-*", trained),
                                        (f"{runs_root}/wandb/offline-run-*", aggregate)) if found)
    n = len({p.parent.parent for p in trained})  # run records (a resumed run has several dirs)
    return (f"wandb: {n} training runs{' and the aggregate' if aggregate else ''} are offline; "
            f"upload them with: wandb sync {paths}  | view in the terminal: "
            f"wandb leet {sorted(trained)[0].parent if trained else runs_root / 'wandb'}")
