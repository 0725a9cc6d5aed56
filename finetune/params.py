"""Read params.yaml sections into the dataclasses that run them.

One file holds every knob (DVC tracks it); unknown keys are an error rather
than a silently ignored typo.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from candor.errors import InvalidInputError, NotFoundError
from candor.finetune.dataset import BuildConfig
from candor.finetune.reader import ReaderConfig
from candor.finetune.train import TrainConfig
from candor.finetune.verifier import VerifierConfig

DEFAULT_PARAMS = Path("params.yaml")


def load_params(path: Path = DEFAULT_PARAMS) -> dict[str, Any]:
    import yaml

    path = Path(path)
    if not path.exists():
        raise NotFoundError(f"params file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise InvalidInputError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(data, dict):
        raise InvalidInputError(f"{path}: expected a mapping of sections")
    return data


def section(params: dict[str, Any], name: str) -> dict[str, Any]:
    value = params.get(name) or {}
    if not isinstance(value, dict):
        raise InvalidInputError(f"params section {name!r} must be a mapping")
    return dict(value)


def to_dataclass(cls: type, values: dict[str, Any], where: str):
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise InvalidInputError(f"{where}: unknown keys {unknown}; known: {sorted(known)}")
    return cls(**values)


def with_variant(values: dict[str, Any], name: str, variant: str | None) -> dict[str, Any]:
    """A section with its ``variants`` mapping removed and, when ``variant`` is named, that variant's overrides."""
    variants = values.pop("variants", None) or {}
    if not isinstance(variants, dict):
        raise InvalidInputError(f"params {name}.variants must be a mapping of name -> overrides")
    if variant:
        if variant not in variants:
            raise InvalidInputError(f"unknown {name} variant {variant!r}; params.yaml defines {sorted(variants)}")
        overrides = variants[variant] or {}
        if not isinstance(overrides, dict):
            raise InvalidInputError(f"params {name}.variants.{variant} must be a mapping of overrides")
        values.update(overrides)
    return values


def train_config(params: dict[str, Any], variant: str | None = None, **overrides: Any):
    """The train section, with a named variant's overrides and then explicit ones applied."""
    values = with_variant(section(params, "train"), "train", variant)
    values.update({k: v for k, v in overrides.items() if v is not None})
    return to_dataclass(TrainConfig, values, "params.yaml train")


def build_data_section(params: dict[str, Any], variant: str | None = None) -> dict[str, Any]:
    """The build_data section with a named variant's overrides applied (``variants`` removed).

    A variant writes a different data set, so it must name its own ``out_dir``: one that did not would
    overwrite the default data that other runs train on.
    """
    values = section(params, "build_data")
    default_out = values.get("out_dir", "the default data folder")
    values = with_variant(values, "build_data", variant)
    if variant and values.get("out_dir") == default_out:
        raise InvalidInputError(
            f"build_data variant {variant!r} must set its own out_dir, or it would overwrite {default_out}"
        )
    return values


def build_config(params: dict[str, Any], variant: str | None = None):
    """The build_data section (with a variant's overrides) as a BuildConfig; source/split/out_dir are the caller's."""
    values = build_data_section(params, variant)
    for key in ("source", "split", "out_dir"):
        values.pop(key, None)
    where = "params.yaml build_data" + (f".variants.{variant}" if variant else "")
    return to_dataclass(BuildConfig, values, where)


def verifier_config(params: dict[str, Any], **overrides: Any):
    """The verifier section; its split follows build_data's seed and val_articles unless it sets them."""
    values = section(params, "verifier")
    data = section(params, "build_data")
    for key in ("seed", "val_articles"):
        if key in data:
            values.setdefault(key, data[key])
    values.update({k: v for k, v in overrides.items() if v is not None})
    return to_dataclass(VerifierConfig, values, "params.yaml verifier")


def reader_config(params: dict[str, Any], sources: list[str], **overrides: Any):
    """The reader section with its data sources resolved by the caller; seed and split follow build_data."""
    values = section(params, "reader")
    values.pop("extra_sources", None)
    data = section(params, "build_data")
    for key in ("seed", "val_articles"):
        if key in data:
            values.setdefault(key, data[key])
    values.update({k: v for k, v in overrides.items() if v is not None})
    values["sources"] = sources
    return to_dataclass(ReaderConfig, values, "params.yaml reader")
