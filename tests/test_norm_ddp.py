"""``sync_moving_statistics(model)`` under torchrun (2 CPU processes, gloo): the moving
statistics stay equal on every process and equal one process holding all the workers
(``per_worker_batch`` groups), as the harness's ``distributed.MovingStatistics`` does."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))
import ddp_sync_worker as worker  # noqa: E402


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp_sync")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               str(ROOT / "tests" / "ddp_sync_worker.py"), str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(2)]


def _moving(state):
    return {k: v for k, v in state.items() if k.endswith(("running_mean", "running_std", "running_var"))}


def test_synced_statistics_equal_one_process_with_all_workers(ranks):
    one = worker.train(worker.make_model(), rank=0, world=1, sync=False).state_dict()
    for state in (r["sync=True"] for r in ranks):
        assert set(_moving(state)) == {"1.running_mean", "1.running_std", "5.running_mean", "5.running_var"}
        for key, value in state.items():  # parameters (DDP) and moving statistics (the sync)
            torch.testing.assert_close(value, one[key], atol=1e-12, rtol=1e-12, msg=key)


def test_without_sync_the_processes_drift_apart(ranks):
    a, b = (_moving(r["sync=False"]) for r in ranks)
    assert any((a[k] - b[k]).abs().max() > 1e-3 for k in a)


def test_one_process_is_a_no_op():
    from brn_repro.norm import sync_moving_statistics

    model = worker.make_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert len(sync_moving_statistics(model)) == 4  # no process group: nothing to do
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
