"""Issue 9, part 2: run records that survive kills, shared filesystems, full disks and
bad input. Every test does the fault to a real (tiny) run and compares numbers: a
run that was killed, damaged or blocked and then rerun ends with the metrics and
summary of one that never was (bit for bit, as the runner promises on a CPU)."""

import os
import random
import re
import runpy
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from brn_repro.config import resolve
from brn_repro.files import TMP_NAME, write_atomic
from brn_repro.records import RecordError, RunRecord, read_config
from brn_repro.train import run

ROOT = Path(__file__).resolve().parents[1]
# what differs between two trainings of one config: the clocks, where, and which training (attempt_id)
TIMING = ("images_per_second", "wall_seconds", "eval_seconds", "run_dir", "attempt_id")


def overrides(runs, data_root, *extra):
    """A 20-step BRN run (its limits relax within it), evaluated every 5 steps,
    checkpointed every 10: a second or less in-process. ``extra`` replaces the keys
    it names (``norm=...`` all of the norm's, ``~key`` drops one)."""
    base = [f"dataset.root={data_root}", "dataset.download=false", "logger=none",
            f"paths.runs={runs}", "train.progress=false", "train.steps=20", "train.eval_every=5",
            "train.checkpoint_every=10", "data.per_worker_batch=4", "data.workers=4", "model.width=4",
            "data.train_eval_size=100", "train.threads=1", "norm=brn", "norm.momentum=0.1",
            "norm.relax_start=5", "norm.r_max_end_step=15", "norm.d_max_end_step=10"]
    chosen = {item.split("=", 1)[0]: item for item in base}
    for item in extra:
        key = item.split("=", 1)[0]
        if key == "norm":
            chosen = {k: v for k, v in chosen.items() if not k.startswith("norm.")}
        chosen.pop(key.lstrip("~"), None)
        if not key.startswith("~"):
            chosen[key] = item
    return list(chosen.values())


def make_config(runs, data_root, *extra):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return resolve(compose("config", overrides=overrides(runs, data_root, *extra)))


def numbers(record: RunRecord):
    """What a run produced, without its timings: metrics rows and summary."""
    rows = [{k: v for k, v in r.items() if k not in TIMING} for r in record.read_metrics()]
    summary = {k: v for k, v in (record.summary() or {}).items() if k not in TIMING}
    return rows, summary


@pytest.fixture(autouse=True)
def _restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_fashion_mnist):
    return uninterrupted(tmp_path_factory.mktemp("reference"), tiny_fashion_mnist)


def uninterrupted(runs, data_root):
    """The run every faulty one is compared with: (metrics rows, summary, final weights)."""
    config = make_config(runs, data_root)
    run(config)
    record = RunRecord(runs, config)
    rows, summary = numbers(record)
    assert [r["step"] for r in rows] == [5, 10, 15, 20] and summary["status"] == "completed"
    return rows, summary, record.load_checkpoint()["model"]


def assert_matches(record, reference):
    rows, summary, weights = reference
    assert numbers(record) == (rows, summary)
    final = record.load_checkpoint()["model"]
    assert all(torch.equal(final[k], weights[k]) for k in weights)
    assert not list(record.dir.glob("run.lock*")) and not list(record.dir.glob(".*"))


def main(argv, monkeypatch, capsys):
    """``python -m brn_repro.train`` in this process: (exit code, stderr lines)."""
    monkeypatch.setattr(sys, "argv", ["brn_repro.train", *argv, "hydra/job_logging=none",
                                      "hydra/hydra_logging=none", "hydra.output_subdir=null",
                                      f"hydra.run.dir={os.getcwd()}"])
    capsys.readouterr()
    code = 0
    try:  # as __main__, the way Hydra finds conf/ from the command line
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # "found in sys.modules": meant here
            runpy.run_module("brn_repro.train", run_name="__main__", alter_sys=True)
    except SystemExit as exit_:
        code = exit_.code
    return code, [line for line in capsys.readouterr().err.splitlines() if line.strip()]


# --- kill -9 ---------------------------------------------------------------------------

# Runs the CLI with one function wrapped to SIGKILL the process at a chosen moment:
# after the n-th metrics row, in the middle of the n-th metrics row or checkpoint file
# (half of it written), before the summary, or at the n-th training step.
KILLER = r"""
import io, os, signal, sys, runpy
import torch
from brn_repro import records
import brn_repro.data as data_module

point, when = sys.argv[1], int(sys.argv[2])
del sys.argv[1:3]
calls = [0]

def die():
    os.kill(os.getpid(), signal.SIGKILL)

def wrap(owner, name, before=None, after=None):
    original = getattr(owner, name)
    def wrapper(*args, **kwargs):
        calls[0] += 1
        if before and calls[0] == when:
            before(*args, **kwargs)
        result = original(*args, **kwargs)
        if after and calls[0] == when:
            after()
        return result
    setattr(owner, name, wrapper)

def half_line(record, row):
    with open(record.metrics_path, "a") as f:
        f.write(records.json.dumps(row)[:25])
    die()

def half_file(state, path):
    buffer = io.BytesIO()
    real_save(state, buffer)
    open(path, "wb").write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    die()

real_save = torch.save
if point == "after_metrics":
    wrap(records.RunRecord, "log_metrics", after=die)
elif point == "mid_metrics":
    wrap(records.RunRecord, "log_metrics", before=half_line)
elif point == "mid_checkpoint":
    wrap(torch, "save", before=half_file)
elif point == "before_summary":
    wrap(records.RunRecord, "write_summary", before=lambda *a: die())
elif point == "step":
    wrap(data_module.TrainingData, "train_batch", before=lambda *a: die())
sys.argv[0] = "brn_repro.train"
runpy.run_module("brn_repro.train", run_name="__main__", alter_sys=True)
"""

KILL_POINTS = [
    ("after_metrics", 1),   # after the first evaluation, before the first checkpoint
    ("mid_metrics", 3),     # half of the row of step 15 written
    ("mid_checkpoint", 2),  # half of the final checkpoint written
    ("before_summary", 1),  # the final checkpoint written, its summary not
    # anywhere (the step is in the test's id); under pytest-xdist every worker draws the same
    ("step", random.Random(os.environ.get("PYTEST_XDIST_TESTRUNUID")).randint(1, 20)),
]


@pytest.mark.parametrize("point,when", KILL_POINTS, ids=[f"{p}-{w}" for p, w in KILL_POINTS])
def test_kill_9_then_rerun_gives_the_uninterrupted_numbers(tmp_path, tiny_fashion_mnist, reference,
                                                           point, when):
    runs = tmp_path / "runs"
    command = [sys.executable, "-c", KILLER, point, str(when),
               *overrides(runs, tiny_fashion_mnist), f"hydra.run.dir={tmp_path / 'out'}"]
    killed = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9, killed.stderr[-2000:]
    record = RunRecord(runs, make_config(runs, tiny_fashion_mnist))
    assert record.summary() is None
    run(make_config(runs, tiny_fashion_mnist))
    assert_matches(record, reference)


# --- damaged files ---------------------------------------------------------------------


def stopped_at_10(runs, data_root) -> RunRecord:
    """A run checkpointed at step 10 (metrics rows 5, 10), as a job limit leaves it."""
    run(make_config(runs, data_root, "train.stop_at_step=10"))
    return RunRecord(runs, make_config(runs, data_root))


def test_partial_last_metrics_line_is_dropped(tmp_path, tiny_fashion_mnist, reference):
    record = stopped_at_10(tmp_path, tiny_fashion_mnist)
    with record.metrics_path.open("a") as f:
        f.write('{"step": 15, "loss": 0.')
    run(make_config(tmp_path, tiny_fashion_mnist))
    assert_matches(record, reference)


@pytest.mark.parametrize("damage", ["truncated checkpoint", "garbage checkpoint", "damaged metrics line",
                                    "missing metrics"])
def test_damaged_record_trains_again_from_step_0_and_says_so(tmp_path, tiny_fashion_mnist, reference,
                                                            capsys, damage):
    record = stopped_at_10(tmp_path, tiny_fashion_mnist)
    if damage == "truncated checkpoint":
        record.checkpoint_path.write_bytes(record.checkpoint_path.read_bytes()[:1000])
    elif damage == "garbage checkpoint":
        record.checkpoint_path.write_text("not a checkpoint")
    elif damage == "damaged metrics line":
        lines = record.metrics_path.read_text().splitlines()
        record.metrics_path.write_text("\n".join(["{oops", *lines[1:]]) + "\n")
    else:
        record.metrics_path.unlink()
    capsys.readouterr()
    run(make_config(tmp_path, tiny_fashion_mnist))
    notes = [line for line in capsys.readouterr().err.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and "training" in notes[0] and "again from step 0" in notes[0]
    assert_matches(record, reference)


@pytest.mark.parametrize("summary", ["{not json", '{"status": "completed", "test_acc": null}', ""])
def test_damaged_or_empty_summary_is_finished_again_from_the_final_checkpoint(
        tmp_path, tiny_fashion_mnist, reference, summary):
    config = make_config(tmp_path, tiny_fashion_mnist)
    run(config)
    record = RunRecord(tmp_path, config)
    record.summary_path.write_text(summary)
    got = run(config)
    assert got["test_acc"] == reference[1]["test_acc"] and got["steps_done"] == 20
    assert_matches(record, reference)


@pytest.mark.parametrize("damage", ["damaged metrics line", "late metrics row", "missing metrics",
                                    "config.yaml not YAML", "config.yaml a scalar"])
def test_a_finished_run_whose_record_does_not_read_back_is_trained_again(tmp_path, tiny_fashion_mnist, reference,
                                                                        capsys, damage):
    """Issue 21.7: a completed record counts as done only when its summary, metrics and
    config read back; otherwise the rerun says what is damaged in one line and trains the
    run again from step 0 (its earlier evaluations cannot be rebuilt from the final
    checkpoint; retraining is deterministic and gives the same numbers)."""
    config = make_config(tmp_path, tiny_fashion_mnist)
    run(config)
    record = RunRecord(tmp_path, config)
    lines = record.metrics_path.read_text().splitlines()
    if damage == "damaged metrics line":
        record.metrics_path.write_text("\n".join([lines[0], "{oops", *lines[2:]]) + "\n")
    elif damage == "late metrics row":  # a late writer's row (issue 21.2)
        record.metrics_path.write_text("\n".join([*lines, lines[1]]) + "\n")
    elif damage == "missing metrics":
        record.metrics_path.unlink()
    else:
        record.config_path.write_text("{not: [yaml\n" if damage == "config.yaml not YAML" else "a scalar\n")
    damaged = record.config_path if damage.startswith("config") else record.metrics_path
    capsys.readouterr()
    assert run(config)["test_acc"] == reference[1]["test_acc"]
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"note: {damaged}"), lines
    assert lines[0].endswith(f"training {record.dir.name} again from step 0"), lines
    assert_matches(record, reference)
    assert read_config(record.dir)["seed"] == config["seed"]


@pytest.mark.parametrize("text,needle", [("{not: [yaml\n", "not YAML"), ("a scalar\n", "a str, not a config")])
def test_a_damaged_config_yaml_is_one_record_error_naming_it(tmp_path, text, needle):
    (tmp_path / "config.yaml").write_text(text)
    with pytest.raises(RecordError) as err:
        read_config(tmp_path)
    assert str(err.value).startswith(f"{tmp_path / 'config.yaml'} is damaged (") and needle in str(err.value)
    assert "\n" not in str(err.value)


def test_another_runs_checkpoint_is_trained_over_from_step_0(tmp_path, tiny_fashion_mnist, reference, capsys):
    """Issue 21.8: a checkpoint carries its run's directory name; another run's (another
    seed's) is a damaged file of this record, said in one line and trained over."""
    other = make_config(tmp_path, tiny_fashion_mnist, "seed=1", "train.stop_at_step=10")
    run(other)
    record = stopped_at_10(tmp_path, tiny_fashion_mnist)
    shutil.copyfile(RunRecord(tmp_path, other).checkpoint_path, record.checkpoint_path)
    capsys.readouterr()
    run(make_config(tmp_path, tiny_fashion_mnist))
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert lines == [f"note: {record.checkpoint_path} is the checkpoint of {RunRecord(tmp_path, other).dir.name}, "
                     f"not of this run; training {record.dir.name} again from step 0"]
    assert_matches(record, reference)


def test_resuming_with_other_threads_is_refused_in_one_line(tmp_path, tiny_fashion_mnist, monkeypatch, capsys):
    """Issue 21.8: torch's CPU kernels split their sums by thread, so a run resumed with
    another train.threads would not end with the numbers it promises; refused, nothing written."""
    record = stopped_at_10(tmp_path, tiny_fashion_mnist)  # train.threads=1
    before = {p.name: p.read_bytes() for p in record.dir.iterdir()}
    code, lines = main(overrides(tmp_path, tiny_fashion_mnist, "train.threads=2"), monkeypatch, capsys)
    assert code == 2 and lines == [
        f"error: {record.dir} was started with train.threads=1 and resumes from its checkpoint; "
        "train.threads=2 would change its numbers: rerun with train.threads=1"], lines
    assert {p.name: p.read_bytes() for p in record.dir.iterdir()} == before


def test_a_summary_without_its_numbers_is_never_written(tmp_path, tiny_fashion_mnist):
    record = RunRecord(tmp_path, make_config(tmp_path, tiny_fashion_mnist))
    with pytest.raises(RecordError, match="completed without test_acc"):
        record.write_summary({"status": "completed", "test_acc": None, "train_acc": 1.0, "steps_done": 1})
    assert not record.summary_path.exists()


def test_off_rank_0_a_record_writes_nothing(tmp_path, tiny_fashion_mnist, capsys):
    """Rank 0 writes for every process: elsewhere the record's writes, lock and resume do
    nothing, and it reads what rank 0 wrote."""
    record = stopped_at_10(tmp_path, tiny_fashion_mnist)  # a checkpoint rank 0 resumes from
    before = {p.name: p.read_bytes() for p in record.dir.iterdir()}
    other = RunRecord(tmp_path, record.config, main=False)
    capsys.readouterr()
    with other.lock() as held:
        assert held and other.resume() is None
        other.start()
        other.log_metrics({"step": 15, "loss": 1.0})
        other.truncate_metrics(0)
        other.save_checkpoint({"step": 15})
        other.write_summary({"status": "diverged", "diverged_step": 15})
        assert {p.name: p.read_bytes() for p in record.dir.iterdir()} == before  # no run.lock either
    assert [r["step"] for r in other.read_metrics()] == [5, 10]
    assert other.load_checkpoint()["step"] == 10
    assert capsys.readouterr() == ("", "")


# --- full disk, unwritable paths -------------------------------------------------------


@pytest.fixture
def tmpfs(tmp_path):
    """A 1 MiB tmpfs (root only): a disk that can be filled, or made read-only."""
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(mount: Path, leave: int) -> Path:
    """Fill the filesystem but ``leave`` bytes."""
    stat = os.statvfs(mount)
    filler = mount / "filler"
    filler.write_bytes(b"\0" * (stat.f_bavail * stat.f_frsize - leave))
    return filler


def test_full_disk_is_one_line_leaves_nothing_behind_and_a_rerun_finishes(
        tmp_path, tiny_fashion_mnist, reference, tmpfs):
    runs = tmpfs / "runs"
    filler = fill(tmpfs, leave=40 * 1024)  # room for the config, lock and metrics, not a checkpoint (52k)
    command = [sys.executable, "-m", "brn_repro.train", *overrides(runs, tiny_fashion_mnist),
               f"hydra.run.dir={tmp_path / 'out'}"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    record = RunRecord(runs, make_config(runs, tiny_fashion_mnist))
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2
    assert lines == [f"error: disk full while writing {record.checkpoint_path}; free space and rerun"]
    assert sorted(p.name for p in record.dir.iterdir()) == ["config.yaml", "metrics.jsonl"]
    filler.unlink()
    run(make_config(runs, tiny_fashion_mnist))
    assert_matches(record, reference)


def test_full_disk_while_logging_metrics_leaves_no_partial_line(tmp_path, tiny_fashion_mnist, monkeypatch):
    import errno

    record = RunRecord(tmp_path, make_config(tmp_path, tiny_fashion_mnist))
    record.start()
    record.log_metrics({"step": 5, "loss": 1.0})
    real_write = os.write

    def half_then_enospc(fd, data):
        real_write(fd, data[:7])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", half_then_enospc)
    with pytest.raises(RecordError, match=f"disk full while writing {record.metrics_path}; free space"):
        record.log_metrics({"step": 10, "loss": 0.5})
    monkeypatch.undo()
    assert record.read_metrics() == [{"step": 5, "loss": 1.0}]
    assert record.metrics_path.read_text().endswith("}\n")


def test_write_atomic_names_the_full_disk_and_removes_its_temporary(tmp_path):
    def torch_on_a_full_disk(tmp):
        tmp.write_bytes(b"half")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")

    (tmp_path / "checkpoint.pt").write_bytes(b"previous")
    with pytest.raises(RecordError, match="disk full while writing .*checkpoint.pt; free space and rerun"):
        write_atomic(tmp_path / "checkpoint.pt", torch_on_a_full_disk)
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]
    assert (tmp_path / "checkpoint.pt").read_bytes() == b"previous"


def test_read_only_runs_directory_is_one_line(tmp_path, tiny_fashion_mnist, tmpfs, monkeypatch, capsys):
    subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], check=True)
    code, lines = main(overrides(tmpfs / "runs", tiny_fashion_mnist), monkeypatch, capsys)
    assert code == 2, lines
    assert lines == [f"error: paths.runs={tmpfs / 'runs'}: {tmpfs} is not writable "
                                   "(read-only?); point paths.runs at a writable directory"]


# --- bad input: one line, exit 2, nothing written --------------------------------------


BAD_INPUT = [
    (["norm=brn", "norm.momentum=1.5"], "norm.momentum=1.5 must lie in (0, 1]"),
    (["norm=bn", "norm.momentum=1.5"], "norm.momentum=1.5 must lie in (0, 1]"),
    (["norm=moving_average", "norm.momentum=0"], "norm.momentum=0 must lie in (0, 1]"),
    (["norm=mabn", "norm.momentum=1.5"], "norm.momentum=1.5 must lie in (0, 1)"),
    (["model.width=0"], "model.width=0 must be a positive integer"),
    (["optim.lr=fast"], "optim.lr='fast' must be a finite number"),
    (["optim.lr=inf"], "optim.lr=inf must be a finite number"),
    (["optim.lr=nan"], "optim.lr=nan must be a finite number"),
    (["train.threads=-1"], "train.threads=-1 must be a positive integer, or null"),
    (["train.eval_test_size=0"], "train.eval_test_size=0 must be a positive integer, or null"),
    (["train.eval_test_size=-5"], "train.eval_test_size=-5 must be a positive integer, or null"),
    (["train.ema_decay=fast"], "train.ema_decay='fast' must be a finite number in (0, 1)"),
    (["experiment=fig2_small_batch", "data.per_worker_batch=3", "~data.workers"],
     "data.workers: recipe.global_batch=128 is not a multiple of data.per_worker_batch=3"),
    (["data.global_batch=64"], "data.global_batch=64 is not what trains: data.workers x data.per_worker_batch = 4 x 4"),
    (["+foo=1"], "foo is not a key of the config"),
    (["tags=[1]"], "tags[]=1 must be a string"),
    (["data.workers=${nope}"], "data.workers: Interpolation key 'nope' not found"),
    (["paths.runs=FILE"], "is a file, not a directory; point paths.runs at a directory"),
    (["paths.runs=FILE/runs"], "is a file, not a directory; point paths.runs at a directory"),
    (["dataset.root=MISSING"], "does not hold Fashion-MNIST"),
    (["paths.lock_timeout=-1"], "paths.lock_timeout=-1 must be a finite number"),
    (["norm=brn", "norm.r_max=0.5"], "r_max=0.5"),
    (["norm=brn", "norm.d_max=-1"], "d_max=-1"),
    (["sampler=noniid", "sampler.labels_per_batch=3"], "data.per_worker_batch=4"),
    (["data.per_worker_batch=0"], "data.per_worker_batch=0"),
    (["model=inception_v3", "~model.width"], "model=inception_v3 needs images of at least 75x75"),
    (["dataset.image_size=4", "data.per_worker_batch=1"],
     "model=small_cnn model.width=4 on 4x4 images with data.per_worker_batch=1: batch statistics need more"),
    (["norm.name=batchnorm"], "norm.name='batchnorm'"),
    (["optim.name=lbfgs"], "optim.name='lbfgs'"),
]


@pytest.mark.parametrize("bad,needle", BAD_INPUT, ids=[" ".join(b) for b, _ in BAD_INPUT])
def test_bad_input_is_one_line_and_exit_2(tmp_path, tiny_fashion_mnist, monkeypatch, capsys, bad, needle):
    (tmp_path / "FILE").write_text("a file")
    runs = tmp_path / "runs"
    argv = [a.replace("FILE", str(tmp_path / "FILE")).replace("MISSING", str(tmp_path / "nowhere"))
            for a in overrides(runs, tiny_fashion_mnist, *bad)]
    code, lines = main(argv, monkeypatch, capsys)
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith("error: ") and needle in lines[0], lines[0]
    assert not runs.exists()


def test_model_sizes_are_checked_before_the_data_is_loaded(tmp_path, tiny_fashion_mnist, monkeypatch, capsys):
    argv = overrides(tmp_path / "runs", tmp_path / "nowhere", "model.width=0")
    assert main(argv, monkeypatch, capsys)[1] == ["error: model.width=0 must be a positive integer"]


@pytest.mark.parametrize("bad", [["model.width=65536"], ["dataset.image_size=4", "data.per_worker_batch=1"]])
def test_a_model_that_cannot_train_is_refused_before_the_data_is_loaded(tmp_path, monkeypatch, capsys, bad):
    """Issue 21.8: a model whose training would not fit in memory (model.width=65536: 5.8e11
    parameters) or whose norms would see one value per channel is one line before any data."""
    code, lines = main(overrides(tmp_path / "runs", tmp_path / "nowhere", *bad), monkeypatch, capsys)
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: model=small_cnn "), lines
    if bad == ["model.width=65536"]:
        assert re.search(r"needs about [\d.]+ TB to train \(5\.8e\+11 parameters.*, more than the "
                         r"[\d.]+ [GT]B free", lines[0]), lines[0]
    assert not (tmp_path / "runs").exists()


# --- secrets -----------------------------------------------------------------------------


def test_environment_values_stay_out_of_the_record_and_its_identity(tmp_path, tiny_fashion_mnist,
                                                                    monkeypatch, capsys):
    key, site = "wandb-key-0123456789abcdef", "cluster-a-scratch"
    monkeypatch.setenv("WANDB_API_KEY", key)
    monkeypatch.setenv("SITE_NAME", site)
    argv = overrides(tmp_path / "runs", tiny_fashion_mnist, "train.steps=5",
                     "+recipe.wandb_key=${oc.env:WANDB_API_KEY}", "+recipe.site=${oc.env:SITE_NAME}",
                     "+recipe.site_copy=${recipe.site}", "+recipe.notes.api_token=plain-text-token",
                     "notes=${recipe.site}")
    assert main(argv, monkeypatch, capsys)[0] == 0
    (run_dir,) = (tmp_path / "runs").iterdir()
    written = "".join(p.read_text() for p in run_dir.iterdir() if p.suffix in (".yaml", ".json", ".jsonl"))
    for secret in (key, site, "plain-text-token", "wandb_key", "site_copy", "api_token"):
        assert secret not in written
    plain = make_config(tmp_path / "runs", tiny_fashion_mnist, "train.steps=5")
    assert RunRecord(tmp_path / "runs", plain).dir == run_dir  # the same run as without them


def test_temporary_names_are_unique_per_writer(tmp_path):
    from brn_repro.files import tmp_path as temporary

    names = {temporary(tmp_path / "checkpoint.pt").name for _ in range(50)}
    assert len(names) == 50 and all(n.startswith(".checkpoint.") and n.endswith(".tmp.pt") for n in names)
    assert all(f"-{os.getpid()}-" in n and TMP_NAME.fullmatch(n) for n in names)
    assert not TMP_NAME.fullmatch(".run.lock.tmphost-12-ab12cd34")  # a waiter's lock candidate
