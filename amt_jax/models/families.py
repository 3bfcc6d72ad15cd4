"""The registry of model families, and model configs as JSON-safe dicts.

One table maps a family name to its model class, config class and published config, so
the trainer, evaluator and transcriber look families up here instead of branching on
``family == ...``. Configs are frozen dataclasses (possibly nested, e.g. the MT3
vocabulary or the O&F mel settings); :func:`config_to_dict` / :func:`config_from_dict`
round-trip them exactly, which is what the workdir's model record stores.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from typing import Any

from amt_jax.models import nmp, onsets_frames, t5


@dataclasses.dataclass(frozen=True)
class Family:
    name: str
    model_class: type
    config_class: type
    published_config: Any
    #: does the family have published weights amt_jax can load without a checkpoint?
    has_pretrained: bool = False


FAMILIES: dict[str, Family] = {
    family.name: family
    for family in (
        Family("nmp", nmp.NMP, nmp.NMPConfig, nmp.NMP_CONFIG, has_pretrained=True),
        Family(
            "onsets_frames",
            onsets_frames.OnsetsFrames,
            onsets_frames.OnsetsFramesConfig,
            onsets_frames.ONSETS_FRAMES_CONFIG,
        ),
        Family("mt3", t5.MT3Model, t5.MT3Config, t5.T5_SMALL),
    )
}
NAMES = tuple(FAMILIES)


def get(name: str) -> Family:
    try:
        return FAMILIES[name]
    except KeyError:
        choices = ", ".join(NAMES)
        raise ValueError(f"unknown model family {name!r}; choose one of {choices}") from None


def of_config(config: Any) -> Family:
    """The family whose config class ``config`` is."""
    for family in FAMILIES.values():
        if isinstance(config, family.config_class):
            return family
    raise ValueError(f"{type(config).__name__} is not the config of any model family")


# --- configs <-> JSON-safe dicts -------------------------------------------------------------


def config_to_dict(config: Any) -> dict[str, Any]:
    """A (nested) config dataclass as plain JSON-safe values (tuples become lists)."""

    def plain(value):
        if dataclasses.is_dataclass(value):
            return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, tuple | list):
            return [plain(v) for v in value]
        return value

    return plain(config)


@functools.cache
def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(value: Any, annotation: Any) -> Any:
    if value is None:
        return None
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(annotation):
            if option is not type(None):
                try:
                    return _coerce(value, option)
                except (TypeError, ValueError):
                    continue
        return value
    if dataclasses.is_dataclass(annotation) and isinstance(value, dict):
        return config_from_dict(annotation, value)
    if (origin is tuple or annotation is tuple) and isinstance(value, list):
        args = [a for a in typing.get_args(annotation) if a is not Ellipsis]
        item = args[0] if len(args) == 1 or Ellipsis in typing.get_args(annotation) else None
        return tuple(_coerce(v, item) if item is not None else _as_tuple(v) for v in value)
    return value


def _as_tuple(value: Any) -> Any:
    return tuple(_as_tuple(v) for v in value) if isinstance(value, list) else value


def config_from_dict(cls: type, values: dict[str, Any]) -> Any:
    """Inverse of :func:`config_to_dict`; unknown keys are a clear error."""
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(f"{cls.__name__} has no fields {unknown} (recorded by another version?)")
    hints = _field_types(cls)
    return cls(**{name: _coerce(value, hints.get(name)) for name, value in values.items()})


__all__ = ["FAMILIES", "NAMES", "Family", "config_from_dict", "config_to_dict", "get", "of_config"]
