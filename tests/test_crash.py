"""Crash safety: `kill -9` at several points, then a rerun finishes the work and gives the same leaderboard as an
uninterrupted run; two concurrent processes on one cache both succeed and compute each feature file once."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from riskdecomp.pretrain.backbones import create_backbone

ARGS = ["--dataset", "digits", "--n-boot", "30", "--fewshot-seeds", "1", "--shots", "1", "--fractions", "0.1",
        "--no-active", "--no-uncertainty", "--no-statistics", "--no-report", "--no-progress"]


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    root = tmp_path_factory.mktemp("crashzoo")
    entries = []
    for i in range(4):
        torch.manual_seed(i)
        net = create_backbone("smallcnn", width=4, z_dim=16)
        save_file(net.state_dict(), str(root / f"cnn{i}.safetensors"))
        entries.append(f"""
          - name: cnn{i}
            source: checkpoint
            architecture: smallcnn
            weights: cnn{i}.safetensors
            model_kwargs: {{width: 4, z_dim: 16}}
            {'reference: cnn0' if i else ''}
        """)
    (root / "zoo.yaml").write_text("models:\n" + "".join(textwrap.indent(textwrap.dedent(e), "  ") for e in entries))
    return root / "zoo.yaml"


def cmd(zoo, out, cache, *extra):
    return [sys.executable, "-m", "riskdecomp.cli", *extra, "evaluate", "--zoo", str(zoo), "--out", str(out),
            "--cache-dir", str(cache), *ARGS]


def n_files(path: Path, pattern: str) -> int:
    return len(list(path.glob(pattern))) if path.exists() else 0


def run_and_kill(argv, condition, timeout=120):
    p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    t0 = time.time()
    while p.poll() is None and not condition() and time.time() - t0 < timeout:
        time.sleep(0.02)
    if p.poll() is None:
        os.killpg(p.pid, signal.SIGKILL)
    p.wait()


def test_kill_9_at_several_points_then_resume_gives_the_same_leaderboard(zoo, tmp_path):
    ref = subprocess.run(cmd(zoo, tmp_path / "ref", tmp_path / "refcache"), capture_output=True, text=True)
    assert ref.returncode == 0, ref.stderr
    out, cache = tmp_path / "out", tmp_path / "cache"
    t_start = time.time()
    points = [
        lambda: time.time() - t_start > 1.5,                              # while starting up
        lambda: n_files(cache / "features", "*/*.npy") >= 1,              # right after a first feature file
        lambda: n_files(out / "runs", "*@*.json") >= 1,                     # after the first run record
        lambda: n_files(out / "runs", "*@*.json") >= 3,                     # later on
    ]
    for cond in points:
        t_start = time.time()
        run_and_kill(cmd(zoo, out, cache), cond)
    final = subprocess.run(cmd(zoo, out, cache), capture_output=True, text=True)
    assert final.returncode == 0, final.stderr
    assert (out / "leaderboard.csv").read_bytes() == (tmp_path / "ref" / "leaderboard.csv").read_bytes()


def test_two_concurrent_processes_share_one_cache(zoo, tmp_path):
    cache = tmp_path / "cache"
    procs = [subprocess.Popen(cmd(zoo, tmp_path / f"out{i}", cache, "-v"), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (_o, e) in zip(procs, outs):
        assert p.returncode == 0, e
    computed = [line for _o, e in outs for line in e.splitlines() if "computed features:" in line]
    assert len(computed) == 4 * 2  # 4 models x 2 splits, each computed once across both processes
    assert (tmp_path / "out0" / "leaderboard.csv").read_bytes() == (tmp_path / "out1" / "leaderboard.csv").read_bytes()
