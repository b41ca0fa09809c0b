"""Scale presets: override files of a bundle (``configs/presets/<name>.yaml``) that size every stage for a machine.

A preset is a bundle config file layered last, so its keys replace the stage's defaults while command-line
overrides still win::

    python -m monai.bundle run --config_file "['bundles/oct_ddpm/configs/common.yaml', \\
        'bundles/oct_ddpm/configs/pretrain.yaml', 'bundles/oct_ddpm/configs/presets/cpu_mini.yaml']" ...

Keys that are the same for every stage are written as they are. What differs between stages (epochs, the
synthesis batch) sits in the preset's ``preset#stages`` table, one row per stage, and the preset sets such a key to
``$monai_oct.recipes.presets.stage_value(@preset, @stage, 'max_epochs')``: each stage config names itself in
``stage``, so the row is picked by the config, with no per-stage file. :func:`load_preset` gives a preset's
values for one stage in Python (the demo and the benchmarks read sizes and counts from it).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

from monai.bundle import ConfigParser

__all__ = ["preset_file", "list_presets", "load_preset", "preset_stages", "stage_value"]

_OWN_KEYS = ("preset", "+imports", "imports")


#: the row of a preset's ``stages`` table that every stage starts from (its own row overrides it).
DEFAULT_ROW = "default"


def list_presets(bundle_root: str | os.PathLike) -> list[str]:
    """The names of the presets of the bundle at ``bundle_root`` (sorted)."""
    return sorted(p.stem for p in (Path(bundle_root) / "configs" / "presets").glob("*.yaml"))


def preset_file(bundle_root: str | os.PathLike, name: str) -> Path:
    """``bundle_root/configs/presets/<name>.yaml``.

    Raises:
        FileNotFoundError: when the bundle has no such preset (the message lists those it has).
    """
    path = Path(bundle_root) / "configs" / "presets" / f"{name}.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no preset {name!r} in {bundle_root} (presets: {list_presets(bundle_root)})")
    return path


def stage_value(preset: Mapping[str, Any], stage: str, key: str) -> Any:
    """The value of ``key`` in the row of ``stage`` of a preset's ``stages`` table (what the preset's
    ``$...stage_value(@preset, @stage, key)`` keys evaluate to).

    Args:
        preset: the preset's ``preset`` section: ``{"name": ..., "stages": {stage: {key: value}}}``.
        stage: the stage config's ``stage``.
        key: the config key.

    Returns:
        the value; None when the row has no ``key`` (a key the stage does not use, e.g. ``max_epochs`` of a
        synthesis, so that a config that resolves all its keys still runs).

    Raises:
        KeyError: when the preset has no row for ``stage`` (naming the preset and the stages it covers).
    """
    return _stage_row(preset, stage).get(key)


def _stage_row(preset: Mapping[str, Any], stage: str) -> dict[str, Any]:
    """The settings of ``stage``: the table's ``default`` row (if any) updated by the stage's own row.

    Raises:
        KeyError: when the table has neither a row for ``stage`` nor a ``default`` row.
    """
    stages = preset.get("stages", {})
    if stage not in stages and DEFAULT_ROW not in stages:
        covered = sorted(s for s in stages if s != DEFAULT_ROW)
        raise KeyError(f"preset {preset.get('name', '?')!r} has no settings for stage {stage!r} (it covers "
                       f"{covered}); leave the preset out or give the values on the command line")
    return {**stages.get(DEFAULT_ROW, {}), **stages.get(stage, {})}


def preset_stages(bundle_root: str | os.PathLike, name: str) -> dict[str, dict[str, Any]]:
    """A preset's per-stage table as written, ``{stage: {key: value}}`` (with its ``default`` row, if any; empty when
    every key is shared); :func:`load_preset` gives what one stage gets.

    Raises:
        FileNotFoundError: no such preset.
    """
    return dict(ConfigParser.load_config_file(preset_file(bundle_root, name)).get("preset", {}).get("stages", {}))


def load_preset(bundle_root: str | os.PathLike, name: str, stage: str | None = None) -> dict[str, Any]:
    """The values a preset sets for one stage: its shared keys and, with ``stage``, that stage's row.

    Args:
        bundle_root: the bundle folder (``bundles/oct_ddpm``).
        name: the preset (``cpu_mini``).
        stage: a stage name (the ``stage`` of its config); None: the shared keys only.

    Returns:
        ``{key: value}`` as the stage's config would see them (before command-line overrides).

    Raises:
        FileNotFoundError: no such preset.
        KeyError: ``stage`` is not in the preset's table.
    """
    cfg = ConfigParser.load_config_file(preset_file(bundle_root, name))
    table = cfg.get("preset", {})
    out = {k: v for k, v in cfg.items() if k not in _OWN_KEYS and not (isinstance(v, str) and v.startswith("$"))}
    if stage is not None:
        out.update(_stage_row(table, stage))
    return out
