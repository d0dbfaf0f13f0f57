"""provenance.git_commit: the commit, '+dirty' for changed code (not results/), None outside git."""

import subprocess

from brn_repro.provenance import git_commit


def git(root, *args):
    return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True,
                          check=True).stdout.strip()


def test_commit_dirty_and_outside_git(tmp_path):
    repo = tmp_path / "repo"
    (repo / "results").mkdir(parents=True)
    (repo / "code.py").write_text("x = 1\n")
    (repo / "results" / "REPORT.md").write_text("old\n")
    git(repo, "init", "-q")
    git(repo, "add", ".")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "one")
    sha = git(repo, "rev-parse", "HEAD")
    git_commit.cache_clear()
    assert git_commit(repo) == sha and len(sha) == 40
    (repo / "results" / "REPORT.md").write_text("rewritten by an aggregate\n")
    git_commit.cache_clear()
    assert git_commit(repo) == sha  # outputs do not make the code dirty
    (repo / "code.py").write_text("x = 2\n")
    git_commit.cache_clear()
    assert git_commit(repo) == f"{sha}+dirty"
    git_commit.cache_clear()
    assert git_commit(tmp_path / "elsewhere") is None
    git_commit.cache_clear()
