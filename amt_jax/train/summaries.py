"""TensorBoard event files through tensorboard's own event writer.

The writer goes through ``tf.io.gfile``, so ``logdir`` may be a local path or any URL that
:mod:`amt_jax.storage` accepts (``gs://bucket/run/tensorboard``, ``ram://...`` in tests).
Only the primary host writes; scalars are logged too so runs without TensorBoard still
show progress.
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Mapping

import numpy as np

from amt_jax import storage


class SummaryWriter:
    """Scalars and images for TensorBoard under ``logdir`` (no-op when ``logdir`` is None)."""

    def __init__(self, logdir: str | None, *, enabled: bool = True):
        self._writer = None
        if logdir is not None and enabled:
            from tensorboard.summary.writer.event_file_writer import EventFileWriter

            logdir = storage.resolve(logdir, "TensorBoard logdir")
            with storage.errors(logdir):
                self._writer = EventFileWriter(logdir)

    def _add(self, step: int, values: list) -> None:
        from tensorboard.compat.proto import event_pb2, summary_pb2

        event = event_pb2.Event(
            wall_time=time.time(), step=int(step), summary=summary_pb2.Summary(value=values)
        )
        self._writer.add_event(event)

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        logging.info(
            "step %d: %s", step, ", ".join(f"{k}={v:.5g}" for k, v in sorted(values.items()))
        )
        if self._writer is None:
            return
        from tensorboard.compat.proto import summary_pb2

        self._add(
            step,
            [summary_pb2.Summary.Value(tag=k, simple_value=float(v)) for k, v in values.items()],
        )

    def images(self, step: int, images: Mapping[str, np.ndarray]) -> None:
        """``images``: name -> [height, width, 3] floats in [0, 1]."""
        if self._writer is None:
            return
        from PIL import Image
        from tensorboard.compat.proto import summary_pb2

        values = []
        for name, image_hwc in images.items():
            pixels = (np.clip(image_hwc, 0.0, 1.0) * 255).astype(np.uint8)
            buffer = io.BytesIO()
            Image.fromarray(pixels).save(buffer, format="PNG")
            encoded = summary_pb2.Summary.Image(
                height=pixels.shape[0],
                width=pixels.shape[1],
                colorspace=3,
                encoded_image_string=buffer.getvalue(),
            )
            values.append(summary_pb2.Summary.Value(tag=name, image=encoded))
        self._add(step, values)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.flush()
            self._writer.close()
