"""MT3's in-training eval with the tracks divided between 2 processes (jax.distributed on
localhost, gloo collectives) gives the same aggregate metrics as one process.

The run is trained once here (tiny MT3, 40 steps: enough to emit notes, so the F1s are
neither 0 nor 1 and differ per track); each worker resumes it at its last step, so all
evaluate exactly the same parameters. The split is uneven: 3 tracks of 1, 5 and 2 windows
on 2 hosts, so host 0 transcribes 2 tracks in 2 predict calls and host 1 one track in 3,
and host 0 must feed a padding batch for the hosts to stay in lockstep.
"""

import json
import os
import shutil
import socket
import subprocess
import sys

import pytest

from tests.train import multihost_eval_worker as worker

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "multihost_eval_worker.py")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        return sock.getsockname()[1]


def _start(workdir, port, process_id, num_processes, devices):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "XLA_"))}
    args = [WORKER, str(workdir), str(port), str(process_id), str(num_processes), str(devices)]
    return subprocess.Popen(
        [sys.executable, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )


def _result(proc):
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    line = next(ln for ln in out.splitlines() if ln.startswith("RESULT "))
    return json.loads(line[len("RESULT ") :])


def _assert_same(a, b):
    assert sorted(a) == sorted(b)
    for name in a:
        assert a[name] == pytest.approx(b[name], rel=1e-9, abs=1e-9), name


@pytest.mark.slow
def test_two_processes_divide_the_eval_tracks_and_agree_with_one(tmp_path):
    base = tmp_path / "base"
    worker.run(str(base), mesh_data=1, num_devices=1)  # train once, checkpoint at the end
    for name in ("one", "two"):
        shutil.copytree(base, tmp_path / name)
    port = _free_port()
    procs = [_start(tmp_path / "two", port, i, 2, 1) for i in range(2)]
    procs.append(_start(tmp_path / "one", 0, 0, 1, 2))  # one process, the same 2 devices
    try:
        *two, one = [_result(proc) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    two.sort(key=lambda r: r["process_index"])
    assert [r["process_count"] for r in two] == [2, 2] and one["process_count"] == 1
    # each host transcribed only its share, and the uneven shares stayed in lockstep
    assert [r["tracks"] for r in two] == [["track0", "track2"], ["track1"]]
    assert one["tracks"] == ["track0", "track1", "track2"]
    assert [r["predict_calls"] for r in two] == [[3], [3]]  # host 0: 2 calls + 1 padding
    assert one["predict_calls"] == [4]  # 1 + 2 + 1 calls of 4 rows
    # the metrics are non-trivial, the same on both hosts and equal to one process's
    metrics = one["eval"]
    assert 0 < metrics["Onset F1"] < 1 and "Onset + offset + program (flat) F1" in metrics
    _assert_same(two[0]["eval"], two[1]["eval"])
    _assert_same(two[0]["eval"], metrics)
    # the standalone evaluator divides the tracks the same way (here from a () -> all
    # callable, of which each host keeps its share) and agrees with one process too
    assert [r["standalone_tracks"] for r in two] == [["track0", "track2"], ["track1"]]
    assert one["standalone"]["tracks"] == two[0]["standalone"]["tracks"] == 3
    _assert_same(two[0]["standalone"], two[1]["standalone"])
    _assert_same(two[0]["standalone"], one["standalone"])
