"""The Makefile: the targets the README names, as `make -n` prints them. (make compare runs in
test_compare.py.)"""
import subprocess

from conftest import REPO


def test_make_shows_the_readme_targets():
    for target in ("all", "test", "data", "train", "sample", "bench"):
        r = subprocess.run(["make", "-n", target, "PYTHON=python3"], cwd=REPO, capture_output=True, text=True)
        assert r.returncode == 0, (target, r.stderr)
    r = subprocess.run(["make", "-n", "all", "PYTHON=python3"], cwd=REPO, capture_output=True, text=True)
    assert "train.py config/quickstart.py" in r.stdout and "sample.py" in r.stdout
    r = subprocess.run(["make", "-n", "test", "PYTHON=python3"], cwd=REPO, capture_output=True, text=True)
    assert "pytest" in r.stdout
    r = subprocess.run(["make", "-n", "data", "DATASET=enwik8", "PYTHON=python3"], cwd=REPO,
                       capture_output=True, text=True)
    assert "prepare.py enwik8" in r.stdout
