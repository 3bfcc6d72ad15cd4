"""The trainer fed by the real input path (tfds ArrayRecord -> chunk store -> grain worker
processes), killed with SIGKILL and resumed: the same losses as an uninterrupted run.

Compiled with XLA's optimisations (not tests/train's fast-compile mode): O&F's conv-stack
gradients come out NaN on this data when XLA:CPU runs with most optimisations disabled."""

import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TASK = "synthetic_tiny_onsets_frames_train"


def run(workdir, num_steps, data_dir, num_workers=2):
    import dataclasses

    import jax

    # the three runs compile the same step: share it through JAX's persistent cache
    jax.config.update("jax_compilation_cache_dir", os.path.join(data_dir, "..", "jax_cache"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)

    from amt_jax.models import onsets_frames
    from amt_jax.train import inputs, loop, optimizers, trainer

    config = dataclasses.replace(
        onsets_frames.ONSETS_FRAMES_TINY, conv_dropout=(0.0, 0.0, 0.0), fc_dropout=0.0
    )
    return loop.train(
        workdir=str(workdir),
        model_factory=trainer.model_factory(onsets_frames.OnsetsFrames, config),
        optimizer=optimizers.adam(1e-3),
        train_data=inputs.task_batches(
            TASK, 4, seed=3, synthetic_config="tiny", data_dir=data_dir, num_workers=num_workers
        ),
        num_steps=num_steps,
        batch_size=4,
        mesh_data=2,
        num_devices=2,
        checkpoint_every=2,
        log_every=1,
        measure_mfu=False,
        progress_bar=False,
        tensorboard=False,
    )


KILL_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    sys.path.insert(0, {repo!r})
    from amt_jax.data import pipeline
    from tests.data import test_input_resume

    original = pipeline.TrainIterator.__next__

    def killing_next(self):
        if self.step == 5:  # step 4 is done (and checkpointed asynchronously)
            import psutil
            with open({pids_file!r}, "w") as f:
                f.write(" ".join(str(c.pid) for c in psutil.Process().children()))
            os.kill(os.getpid(), signal.SIGKILL)
        return original(self)

    pipeline.TrainIterator.__next__ = killing_next
    if __name__ == "__main__":
        test_input_resume.run({workdir!r}, 6, {data_dir!r})
    """
)


def _alive(pids, wait_seconds=10.0):
    """Those of `pids` still running after up to `wait_seconds`."""
    import time

    import psutil

    deadline = time.monotonic() + wait_seconds
    while True:
        alive = [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"]
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.2)


@pytest.fixture
def restore_jax_cache_config():
    import jax

    names = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs")
    before = {name: getattr(jax.config, name) for name in names}
    yield
    for name, value in before.items():
        jax.config.update(name, value)


@pytest.mark.slow
@pytest.mark.usefixtures("restore_jax_cache_config")
def test_sigkill_resume_through_the_real_input_pipeline(tmp_path):
    data_dir = str(tmp_path / "tfds")
    straight = run(tmp_path / "straight", 6, data_dir, num_workers=0)  # builds the data
    pids_file = str(tmp_path / "children.txt")
    script = KILL_SCRIPT.format(
        repo=REPO, workdir=str(tmp_path / "killed"), data_dir=data_dir, pids_file=pids_file
    )
    # the killed run reads with 2 grain workers too; they must die with it
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    log = tmp_path / "killed.log"
    with open(log, "wb") as out:  # a file, not a pipe: nothing can hold it open
        process = subprocess.run(
            [sys.executable, "-c", script], env=env, stdout=out, stderr=subprocess.STDOUT
        )
    assert process.returncode == -signal.SIGKILL, log.read_text()[-3000:]
    resumed = run(tmp_path / "killed", 6, data_dir)  # 2 grain workers, the straight run 0
    with open(pids_file) as f:
        children = [int(p) for p in f.read().split()]
    assert len(children) >= 2  # the grain workers (+ multiprocessing's resource tracker)
    assert not _alive(children[:0] + children), "processes outlived the killed trainer"
    restarted_from = 6 - len(resumed.losses)
    assert restarted_from in (2, 4)  # the async save of step 4 may not have finished
    np.testing.assert_array_equal(resumed.losses, straight.losses[restarted_from:])
