"""Learning curve of a training run from its TensorBoard scalars.

    python tools/plot_learning_curve.py WORKDIR OUT.png [--title TEXT]

Plots ``train/loss`` and ``eval/Onset F1`` against steps (the eval points the run logged).
"""

from __future__ import annotations

import argparse
import os


def scalars(workdir: str) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing import event_accumulator

    accumulator = event_accumulator.EventAccumulator(
        os.path.join(workdir, "tensorboard"), size_guidance={event_accumulator.TENSORS: 0}
    )
    accumulator.Reload()
    series: dict[str, list[tuple[int, float]]] = {}
    for tag in accumulator.Tags().get("tensors", []):
        import tensorflow as tf

        series[tag] = [
            (event.step, float(tf.make_ndarray(event.tensor_proto)))
            for event in accumulator.Tensors(tag)
        ]
    for tag in accumulator.Tags().get("scalars", []):
        series[tag] = [(event.step, float(event.value)) for event in accumulator.Scalars(tag)]
    return series


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdir")
    parser.add_argument("out")
    parser.add_argument("--title", default=None)
    args = parser.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = scalars(args.workdir)
    if "train/loss" not in series:
        raise SystemExit(f"error: no train/loss scalars under {args.workdir}/tensorboard")
    fig, loss_axis = plt.subplots(figsize=(7, 4), constrained_layout=True)
    steps, values = zip(*series["train/loss"])
    loss_axis.plot(steps, values, color="tab:blue", label="train loss")
    loss_axis.set_xlabel("step")
    loss_axis.set_ylabel("train loss", color="tab:blue")
    f1_axis = loss_axis.twinx()
    for tag, color in (("eval/Onset F1", "tab:red"), ("eval/Onset + offset F1", "tab:orange")):
        if tag in series:
            steps, values = zip(*series[tag])
            f1_axis.plot(steps, values, "o-", color=color, label=tag.removeprefix("eval/"))
    f1_axis.set_ylabel("eval F1 (validation tracks)")
    f1_axis.set_ylim(0, 1)
    fig.legend(loc="center right", fontsize=8)
    loss_axis.set_title(args.title or os.path.basename(os.path.abspath(args.workdir)))
    fig.savefig(args.out, dpi=100)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
