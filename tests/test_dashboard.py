"""The W&B dashboard built in code, without network: the workspace and report objects
validate and hold what REPORT.md holds, and every key they name is one a training run logs;
offline, the aggregate run carries results/ as an artifact and the command says what it
would save; one sync line covers every run."""

import json
from types import SimpleNamespace

import pytest
from test_aggregate import make_all_experiments
from test_train import make_config
from test_wandb_logger import offline_env, read_records  # noqa: F401 (fixture)
from test_wandb_runs import offline_runs

from brn_repro.analysis.aggregate import condition_columns, condition_summary, load_runs
from brn_repro.analysis.claims import evaluate_claims
from brn_repro.analysis.dashboard import (
    PANELS,
    PanelSpec,
    build_report,
    build_workspace,
    experiment_panels,
    offline_sync_line,
    publish,
)
from brn_repro.analysis.experiments import claim_experiments
from brn_repro.analysis.report import claims_table
from brn_repro.records import RunRecord, write_membership
from brn_repro.train import run

pytest.importorskip("wandb_workspaces")


def matplotlib_png(path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(2, 2))
    ax.plot([0, 1], [0, 1])
    fig.savefig(path)
    plt.close(fig)


@pytest.fixture
def aggregated(tmp_path):
    make_all_experiments(tmp_path / "runs")
    runs, curves = load_runs(tmp_path / "runs")
    return runs, evaluate_claims(runs, curves)


def panels_of(runs):
    return {name: experiment_panels(name, runs[runs["experiment"] == name])
            for name in sorted(runs["experiment"].unique())}


def test_each_experiment_gets_the_panels_its_runs_call_for(aggregated):
    runs, _ = aggregated
    panels = panels_of(runs)
    titles = {name: [p.title for p in specs] for name, specs in panels.items()}
    assert titles["fig1_baseline"][0] == "test accuracy (%)"
    assert "BRN: fraction of r, d clipped" in titles["fig1_baseline"]
    # the batch-size curve only where per_worker_batch varies
    curve = PanelSpec("final test accuracy (%) vs per-worker batch", ("test_acc.last",),
                      kind="scatter", x="data.per_worker_batch", log_x=True)
    assert curve in panels["batch_size_sweep"] and curve not in panels["fig1_baseline"]
    assert curve not in panels["fig2_small_batch"]  # one per-worker batch: no curve
    assert "weight norm" in titles["moving_average_question"]
    assert "weight norm" not in titles["fig2_small_batch"]
    # the charts of the figures the experiment's description lists (brn_repro.analysis.experiments)
    assert "train accuracy (%), inference mode" in titles["fig3_noniid"]
    assert "train accuracy (%), inference mode" not in titles["fig1_baseline"]


def test_workspace_validates_offline_with_one_section_per_experiment(aggregated):
    runs, _ = aggregated
    panels = panels_of(runs)
    workspace = build_workspace("someone", "brn-repro", "quick", panels)
    view = workspace._to_model()  # pydantic validation, no network
    assert [s.name for s in workspace.sections] == sorted(panels)
    assert all(s.is_open for s in workspace.sections)
    assert [len(s.panels) for s in workspace.sections] == [len(p) for p in panels.values()]
    # the profile's runs only, grouped by experiment (W&B group), norm and per-worker batch:
    # the nested config WandbLogger logs, ``.value`` after the top-level key (W&B's envelope)
    filters = view.spec.section.run_sets[0].model_dump(by_alias=True, mode="json")["filters"]
    assert filters["filters"][0]["key"] == {"section": "config", "name": "profile_name"}
    assert filters["filters"][0]["value"] == "quick"
    grouping = view.spec.section.run_sets[0].model_dump(by_alias=True, mode="json")["grouping"]
    assert [g["name"] for g in grouping] == [
        "group", "norm.value.name", "data.value.per_worker_batch", "sampler.value.name"]
    assert workspace.name == "brn-repro quick"


def test_report_mirrors_the_verdict_table_with_a_grid_per_claim(aggregated):
    runs, claims = aggregated
    table = claims_table(claims)
    report = build_report("someone", "brn-repro", "quick", claims, table, panels_of(runs),
                          online=False)
    model = report._to_model()
    text = json.dumps(model.model_dump(by_alias=True, mode="json"))
    markdown = [b.text for b in report.blocks if type(b).__name__ == "MarkdownBlock"]
    assert markdown[0] == "\n".join(table) and "**reproduced**" in markdown[0]
    grids = [b for b in report.blocks if type(b).__name__ == "PanelGrid"]
    assert [g.runsets[0].name for g in grids] == [
        "fig1_baseline", "fig2_small_batch", "fig3_noniid", "moving_average_question"]
    for grid in grids:  # each grid shows exactly the runs tagged with its experiment
        (runset,) = grid.runsets
        wire = runset._to_model().model_dump(by_alias=True, mode="json")
        tags, profile = wire["filters"]["filters"]
        assert (tags["key"]["name"], tags["op"], tags["value"]) == ("tags", "IN", [runset.name])
        assert (profile["key"]["name"], profile["value"]) == ("profile_name", "quick")
    headings = [b.text for b in report.blocks if type(b).__name__ == "H2"]
    assert headings == [f"Claim {c.key}: {c.verdict}" for c in claims]
    assert "fig3_noniid" in text


def serialized_keys(spec) -> list[tuple[str, object]]:
    """Every key a serialized workspace or report names: ("filter", filter), ("key", run-set
    key: grouping, sort), ("panel", a panel's axis or metric string)."""
    found = []

    def walk(node, field=""):
        if isinstance(node, dict):
            if isinstance(node.get("key"), dict) and "op" in node:
                found.append(("filter", node))
                return
            if {"section", "name"} <= node.keys():
                found.append(("key", node))
                return
            for name, value in node.items():
                walk(value, name)
        elif isinstance(node, list):
            for item in node:
                walk(item, field)
        elif isinstance(node, str) and field in ("xAxis", "yAxis", "zAxis", "metrics", "groupBy"):
            found.append(("panel", node))

    walk(spec)
    return found


def resolve(tree, path: str):
    """``path``'s value in ``tree`` as W&B reads a dotted server path: a segment may be a
    key holding dots itself (a config logged flat); KeyError when nothing is there."""
    if not path:
        return tree
    segments = path.split(".")
    for end in range(1, len(segments) + 1):
        head = ".".join(segments[:end])
        if isinstance(tree, dict) and head in tree:
            try:
                return resolve(tree[head], ".".join(segments[end:]))
            except KeyError:
                continue
    raise KeyError(path)


@pytest.fixture
def logged_run(offline_env, tiny_fashion_mnist):  # noqa: F811
    """What a tiny offline training run logs to W&B (BRN: every panel's metric), serving the
    experiment of every claim: its config as W&B's server stores it (each top-level key in a
    ``{"value": ...}`` envelope), summary, history keys and run attributes."""
    runs = offline_env / "runs"
    config = make_config(runs, tiny_fashion_mnist, "logger=wandb", "norm=brn", "train.steps=4",
                         "train.eval_every=2", "train.checkpoint_every=4", "norm.relax_start=0")
    for experiment in set(claim_experiments().values()):
        write_membership(runs, experiment, [config])
    assert run(config)["status"] == "completed"
    ((state, records),) = offline_runs(RunRecord(runs, config).dir)
    (run_record,) = [r["run"] for r in records if r["type"] == "run"]
    history = {key for r in records if r["type"] == "history" for key in r["history"]["item"]}
    return SimpleNamespace(config={k: {"value": v} for k, v in state["config"].items()},
                           summary=state["summary"], history=history, profile=config["profile_name"],
                           run={"group": run_record["run_group"], "tags": state["tags"],
                                "createdAt": state["start_time"]})


def check_logged(kind: str, item, logged) -> str | None:
    """Why ``item`` names nothing the run logged (or its filter leaves the run out); None if it does."""
    if kind == "panel":
        section, _, name = item.rpartition(":")
        tree = {"config": logged.config, "summary": logged.summary}.get(section)
        if tree is None:  # no section: a history metric (a line plot's y, its x)
            return None if item in logged.history else f"{item}: not in the history {sorted(logged.history)}"
    else:
        key = item["key"] if kind == "filter" else item
        section, name = key["section"], key["name"]
        if section == "run":
            value = logged.run.get(name)
            if not value:
                return f"run:{name}: not a run attribute logged"
            if kind == "filter" and not set(item["value"]) & set(value):  # tags IN [...]
                return f"filter {name} {item['op']} {item['value']}: leaves the run ({value}) out"
            return None
        # a filter's config key is the frontend's name (W&B appends .value); the rest are server paths
        tree, name = logged.config, f"{name}.value" if kind == "filter" else name
    try:
        value = resolve(tree, name)
    except KeyError:
        return f"{section}:{name}: nothing the run logged"
    if isinstance(value, dict):
        return f"{section}:{name}: a section of the {section}, not a value"
    if kind == "filter" and (item["op"], item["value"]) != ("=", value):
        return f"filter {section}:{name} {item['op']} {item['value']!r}: leaves the run ({value!r}) out"
    return None


def test_every_key_of_the_workspace_and_report_is_one_a_training_run_logs(logged_run):
    """The dashboard's key paths, serialized as wandb_workspaces sends them, against a real
    offline run: a panel over a key W&B does not hold is empty on the server, and nothing
    offline would say so (the per-worker-batch scatter's x once was
    ``config:data.value.per_worker_batch.value``, of a config logged flat)."""
    deciding = claim_experiments()
    experiments = {name: list(PANELS.values()) for name in sorted(set(deciding.values()))}
    claims = [SimpleNamespace(key=key, verdict="reproduced", text="claim", primary="test") for key in deciding]
    workspace = build_workspace("someone", "brn-repro", logged_run.profile, experiments)
    report = build_report("someone", "brn-repro", logged_run.profile, claims, ["| verdicts |"], experiments,
                          online=False)
    keys = [found for model in (workspace._to_model(), report._to_model())
            for found in serialized_keys(model.model_dump(by_alias=True, mode="json"))]
    assert {"config:data.value.per_worker_batch", "summary:test_acc.last", "norm/mean/r_clip_frac"} <= {
        item for kind, item in keys if kind == "panel"}
    assert {(k["section"], k["name"]) for kind, k in keys if kind == "key"} >= {
        ("run", "group"), ("config", "norm.value.name"), ("config", "data.value.per_worker_batch")}
    assert sum(kind == "filter" for kind, _ in keys) == 1 + 2 * len(claims)  # profile; each grid: tag, profile
    problems = {problem for kind, item in keys if (problem := check_logged(kind, item, logged_run))}
    assert not problems, sorted(problems)


def test_offline_aggregate_logs_results_as_an_artifact_and_says_what_it_would_save(
        offline_env, capsys):  # noqa: F811
    runs_root, out = offline_env / "runs", offline_env / "results"
    make_all_experiments(runs_root)
    # what aggregate(..., log_to_wandb=True) calls once results/ is written (figures aside:
    # test_aggregate draws them; here a stand-in PNG keeps this test to seconds)
    runs, curves = load_runs(runs_root)
    summaries = {name: condition_summary(frame, condition_columns(frame, name) or ["norm.name"])
                 for name, frame in runs.groupby("experiment")}
    (out / "fig1_baseline").mkdir(parents=True)
    for name, summary in summaries.items():
        (out / name).mkdir(exist_ok=True)
        summary.to_csv(out / name / "summary.csv", index=False)
    runs.to_csv(out / "runs.csv", index=False)
    (out / "REPORT.md").write_text("# report\n")
    figure = out / "fig1_baseline" / "test_acc_vs_step.png"
    matplotlib_png(figure)
    claims = evaluate_claims(runs, curves)
    print(publish(out, runs_root, runs, summaries, {"fig1_baseline": [figure]}, claims,
                  claims_table(claims)))
    said = capsys.readouterr().out
    assert "wandb: aggregate run and artifact results-quick (offline)" in said
    assert "would save workspace 'brn-repro quick' (" in said and "report 'brn-repro: quick" in said
    (sync_dir,) = (runs_root / "wandb").glob("offline-run-*")
    (wandb_file,) = sync_dir.glob("run-*.wandb")
    records = read_records(wandb_file)
    (artifact,) = [r["artifact"] for r in records
                   if r["type"] == "artifact" and r["artifact"]["type"] == "results"]
    assert artifact["name"] == "results-quick"
    paths = {entry["path"] for entry in artifact["manifest"]["contents"]}
    assert {"REPORT.md", "runs.csv", "fig1_baseline/summary.csv"} <= paths
    (run,) = [r["run"] for r in records if r["type"] == "run"]
    assert (run["job_type"], run["run_group"]) == ("aggregate", "quick/aggregate")
    line = offline_sync_line(runs_root)
    assert line.startswith("wandb: 0 training runs and the aggregate are offline")
    assert f"wandb sync {runs_root}/wandb/offline-run-*" in line


def test_one_sync_line_covers_every_offline_run(tmp_path):
    assert offline_sync_line(tmp_path) is None
    for name in ("bn-a-0000000001", "brn-b-0000000002"):
        for when in ("20260101_000000", "20260101_000100"):  # a resumed run: two directories
            (tmp_path / name / "wandb" / f"offline-run-{when}-{name.replace('-', '_')}").mkdir(parents=True)
    line = offline_sync_line(tmp_path)
    assert line.count("wandb sync") == 1
    assert line.startswith("wandb: 2 training runs are offline")
    assert f"wandb sync {tmp_path}/*/wandb/offline-run-*  |" in line


def test_online_retagging_adds_every_experiment_a_record_serves(tmp_path):
    """The public-API step of an online aggregate, against a stand-in API: a run trained
    for fig2 and shared by fig3 learns the second tag; a run already complete is left. A
    record's W&B run is its summary's training (``attempt_id``), not its directory's name."""
    import pandas as pd

    from brn_repro.analysis.dashboard import _retag

    class Run:
        def __init__(self, tags):
            self.tags, self.updates = list(tags), 0

        def update(self):
            self.updates += 1

    class Api:
        def __init__(self):
            self.runs = {"ent/proj/attempt0aaaa": Run(["fig2_small_batch"]),
                         "ent/proj/attempt0bbbb": Run(["fig3_noniid"])}

        def run(self, path):
            if path not in self.runs:
                raise ValueError(f"no run {path}")
            return self.runs[path]

    done = {"status": "completed", "test_acc": 80.0, "train_acc": 90.0, "steps_done": 10}
    records = {"bn-pwb4x32-iid-s0-aaaa": "attempt0aaaa", "bn-pwb4x32-noniid-s0-bbbb": "attempt0bbbb",
               "never-synced-cccc": "attempt0cccc", "unfinished-dddd": None}
    for name, attempt_id in records.items():
        (tmp_path / name).mkdir()
        if attempt_id:
            (tmp_path / name / "summary.json").write_text(json.dumps({**done, "attempt_id": attempt_id}))
    runs = pd.DataFrame([
        {"run_dir": str(tmp_path / "bn-pwb4x32-iid-s0-aaaa"), "experiment": "fig2_small_batch"},
        {"run_dir": str(tmp_path / "bn-pwb4x32-iid-s0-aaaa"), "experiment": "fig3_noniid"},
        {"run_dir": str(tmp_path / "bn-pwb4x32-noniid-s0-bbbb"), "experiment": "fig3_noniid"},
        {"run_dir": str(tmp_path / "never-synced-cccc"), "experiment": "fig1_baseline"},
        {"run_dir": str(tmp_path / "unfinished-dddd"), "experiment": "fig1_baseline"}])
    api = Api()
    assert _retag(api, "ent", "proj", runs) == 1
    shared, alone = api.runs.values()
    assert (shared.tags, shared.updates) == (["fig2_small_batch", "fig3_noniid"], 1)
    assert (alone.tags, alone.updates) == (["fig3_noniid"], 0)
