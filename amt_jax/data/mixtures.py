"""Task mixtures with temperature sampling: rate_i ∝ n_i ** τ (τ = 0.3 as MT3 / mT5).

τ = 1 samples in proportion to size, τ = 0 uniformly over tasks; 0.3 lets small datasets
(GuitarSet, URMP) be seen often without the large ones (Slakh) vanishing.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from amt_jax.data import tasks

DEFAULT_TEMPERATURE_EXPONENT = 0.3


@dataclasses.dataclass(frozen=True)
class MixtureSpec:
    name: str
    task_names: tuple[str, ...]
    rates: tuple[float, ...]  # normalised sampling probabilities

    def family(self) -> str:
        families = {tasks.get_task(n).family for n in self.task_names}
        if len(families) != 1:
            raise ValueError(f"mixture {self.name} mixes model families {families}")
        return families.pop()


MIXTURES: dict[str, MixtureSpec] = {}


def mixture_rates(sizes, temperature_exponent: float = DEFAULT_TEMPERATURE_EXPONENT):
    """Sampling probabilities p_i = n_i^τ / Σ_j n_j^τ."""
    sizes = np.asarray(sizes, np.float64)
    if np.any(sizes <= 0):
        raise ValueError(f"task sizes must be positive, got {sizes.tolist()}")
    weights = sizes**temperature_exponent
    return weights / weights.sum()


def register_mixture(
    name: str,
    task_names,
    temperature_exponent: float = DEFAULT_TEMPERATURE_EXPONENT,
    sizes=None,
    *,
    with_seqio: bool = True,
) -> MixtureSpec:
    """Register a mixture; `sizes` defaults to each task's number of examples."""
    task_names = tuple(task_names)
    if sizes is None:
        sizes = [tasks.num_examples(tasks.get_task(n)) for n in task_names]
    rates = tuple(float(r) for r in mixture_rates(sizes, temperature_exponent))
    spec = MixtureSpec(name, task_names, rates)
    spec.family()  # validates
    MIXTURES[name] = spec
    if with_seqio:
        import seqio  # noqa: PLC0415

        if name in seqio.MixtureRegistry.names():
            seqio.MixtureRegistry.remove(name)
        seqio.MixtureRegistry.add(name, list(zip(task_names, rates)))
    return spec


def get_mixture(name: str) -> MixtureSpec:
    """The tasks and normalised rates of a mixture or task, as seqio's registry defines
    them (a mixture a user added with `seqio.MixtureRegistry.add` of amt_jax tasks works
    too); names registered without seqio come from amt_jax's own table."""
    import seqio  # noqa: PLC0415

    if name in seqio.MixtureRegistry.names():
        mixture = seqio.get_mixture_or_task(name)
        names = tuple(t.name for t in mixture.tasks)
        unknown = [n for n in names if n not in tasks.TASKS]
        if unknown:
            raise KeyError(
                f"mixture {name!r} has tasks that are not amt_jax tasks (no chunk store to "
                f"read): {unknown}; register them with amt_jax.data.tasks.register_task"
            )
        rates = np.array([mixture.get_rate(t) for t in mixture.tasks], np.float64)
        if not np.all(rates >= 0) or rates.sum() <= 0:
            raise ValueError(f"mixture {name!r} has rates {rates.tolist()}")
        spec = MixtureSpec(name, names, tuple(float(r) for r in rates / rates.sum()))
        spec.family()
        return spec
    if name in MIXTURES:
        return MIXTURES[name]
    if name in tasks.TASKS:  # a task is a mixture of one
        return MixtureSpec(name, (name,), (1.0,))
    raise KeyError(f"unknown task or mixture {name!r}")
