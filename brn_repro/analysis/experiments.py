"""One description per experiment: what its runs are compared by, which claim it serves,
which figures it gets. The reproduction driver (scripts/reproduce.py), aggregation, the
figures, the claims, the report and the W&B dashboard all read this table.

What a run *is* lives in its config, ``conf/experiment/<name>.yaml`` (the sweep, and how
to run it, in its header); how the runs are *read* lives here. The two are kept apart on
purpose: a key added to the config would enter every run's identity
(``records.run_dir_name``) and move recorded results. Adding an experiment is one config
and one ``Experiment`` in ``EXPERIMENTS``; ``check_described`` (run by the driver and the
tests) says which one is missing.

The claims are the paper's (Ioffe 2017, PAPER.md), numbered as ``brn_repro.analysis.claims`` numbers
them: 1 (Fig 1), 2 (Fig 2), 3 (Fig 3), 4 (section 2's moving averages in training). Each claim
names the experiment that decides it and those its secondary rows read
(``brn_repro.analysis.claims.CLAIMS``); ``Experiment.decides``/``supports`` read that table, so adding
a claim is one ``PaperClaim``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from brn_repro.analysis.claims import CLAIMS
from brn_repro.paths import CONF_DIR

# Figures every experiment gets (plots.FIGURES names the file stems); BRN's corrections
# only where it has BRN runs, the moving averages' error where its norms keep them.
COMMON_FIGURES = ("test_acc_vs_step", "brn_corrections", "ema_error_vs_step")


@dataclass(frozen=True)
class Experiment:
    """How one experiment's runs are read.

    ``conditions``: the config columns that tell one condition from another (seed aside);
    the summary, the figures' lines and the paired comparisons group by them.
    ``figures``: figures beyond ``COMMON_FIGURES`` (plots.FIGURES names).
    ``claim_figure``: the figure shown beside the claim it decides in REPORT.md.
    """

    name: str
    title: str
    conditions: tuple[str, ...]
    figures: tuple[str, ...] = ()
    claim_figure: str = "test_acc_vs_step"

    @property
    def decides(self) -> str | None:
        """The claim whose primary comparison its runs decide (seeds: its config)."""
        return next((key for key, claim in CLAIMS.items() if claim.experiment == self.name), None)

    @property
    def supports(self) -> tuple[str, ...]:
        """The claims whose secondary rows also read its runs."""
        return tuple(key for key, claim in CLAIMS.items() if self.name in claim.secondary)

    @property
    def in_default_reproduction(self) -> bool:
        """``make reproduce`` runs what decides a claim; ``make reproduce-full`` adds the rest,
        the secondary rows' experiments first (the default must fit 45 minutes on 2 cores)."""
        return self.decides is not None

    @property
    def all_figures(self) -> tuple[str, ...]:
        return COMMON_FIGURES + self.figures


# In the order the driver runs them (fig3_noniid's i.i.d. runs are fig2's records).
EXPERIMENTS: dict[str, Experiment] = {e.name: e for e in (
    Experiment("fig1_baseline", "Fig. 1 baseline (per-worker batch 32)", ("norm.name",)),
    Experiment("fig2_small_batch", "Fig. 2 small per-worker batch",
               ("norm.name", "data.per_worker_batch")),
    Experiment("fig2_paper_batch", "Fig. 2 at the paper's per-worker 4",
               ("norm.name", "data.per_worker_batch")),
    Experiment("fig3_noniid", "Fig. 3 non-i.i.d. minibatches", ("norm.name", "sampler.name"),
               figures=("train_acc_vs_step",)),
    # claim 4's primary (constant lr, no weight decay) and the profile's setting
    Experiment("moving_average_question", "Moving averages in training (claim 4)",
               ("norm.name", "train.lr_schedule", "optim.weight_decay"),
               figures=("loss_vs_step", "weight_norm_vs_step"), claim_figure="weight_norm_vs_step"),
    Experiment("fig3_controls", "Fig. 3 controls",
               ("norm.name", "sampler.name", "data.per_worker_batch")),
    Experiment("batch_size_sweep", "Batch-size sweep", ("norm.name", "data.per_worker_batch"),
               figures=("acc_vs_per_worker_batch",)),
    Experiment("rd_schedule_ablation", "rₘₐₓ × dₘₐₓ ablation", ("norm.r_max", "norm.d_max"),
               figures=("rmax_dmax_heatmap",)),
    Experiment("relaxation_length", "Relaxation length",
               ("norm.relax_start", "norm.r_max_end_step", "norm.d_max_end_step")),
    Experiment("moving_average_schedules", "Moving-average rates",
               ("norm.name", "norm.momentum", "norm.momentum_start")),
)}


def described(name: str) -> Experiment | None:
    """The description of ``name``; None for a run outside the table (``experiment=adhoc``)."""
    return EXPERIMENTS.get(name)


def title(name: str) -> str:
    return EXPERIMENTS[name].title if name in EXPERIMENTS else name.replace("_", " ")


def figures(name: str) -> tuple[str, ...]:
    return EXPERIMENTS[name].all_figures if name in EXPERIMENTS else COMMON_FIGURES


def deciding(claim: str) -> str:
    """The experiment whose runs decide ``claim``'s primary comparison."""
    return CLAIMS[claim].experiment


def supporting(claim: str) -> list[str]:
    """The experiments, beside the deciding one, that ``claim``'s secondary rows read."""
    return list(CLAIMS[claim].secondary)


def claim_experiments() -> dict[str, str]:
    """Claim -> the experiment deciding it, in claim order."""
    return {key: claim.experiment for key, claim in CLAIMS.items()}


def configured(conf_dir: Path = CONF_DIR) -> list[str]:
    """The experiments that have a config: conf/experiment/<name>.yaml (the group's options;
    conditions/ holds no experiment)."""
    return sorted(p.stem for p in (Path(conf_dir) / "experiment").glob("*.yaml"))


def check_described(conf_dir: Path = CONF_DIR) -> None:
    """ValueError naming each experiment config without a description and each description
    without a config: adding an experiment takes both."""
    configs, table = set(configured(conf_dir)), set(EXPERIMENTS)
    problems = []
    if missing := sorted(configs - table):
        problems.append(f"{', '.join(f'conf/experiment/{n}.yaml' for n in missing)}: no "
                        "description; add an Experiment to brn_repro.analysis.experiments.EXPERIMENTS")
    if orphans := sorted(table - configs):
        problems.append(f"{', '.join(orphans)} in brn_repro.analysis.experiments.EXPERIMENTS: no config; "
                        "add conf/experiment/<name>.yaml or remove the description")
    if problems:
        raise ValueError("; ".join(problems))


def reproduction(full: bool = False, conf_dir: Path = CONF_DIR) -> list[str]:
    """The experiments ``make reproduce`` runs (those some claim reads), in the table's
    order; with ``full`` (``make reproduce-full``) every configured one."""
    check_described(conf_dir)
    return [name for name, e in EXPERIMENTS.items() if full or e.in_default_reproduction]
