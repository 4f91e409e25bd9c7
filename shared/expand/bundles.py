"""What quant_config and parallel_config share: a preset or per-field values → labelled sets of engine flags."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import msgspec

from autotune.schemas.spec import Scalar
from autotune.shared.expand.flags import canonical, value_text
from autotune.shared.expand.space import ExpandError, same

Flags = dict[str, Scalar]


def merge_flags(into: Flags, flags: Flags, what: str, sources: dict[str, str], path: str) -> None:
    """Add `flags` to `into`; two fields that set one flag differently are refused, naming both (`sources`)."""
    for flag, value in flags.items():
        if flag in into and not same(into[flag], value):
            raise ExpandError(
                f"{what} sets --{flag} {value_text(value)} but {sources[flag]} already sets --{flag} {value_text(into[flag])}; "
                "these cannot be combined",
                path,
            )
        into[flag] = value
        sources.setdefault(flag, what)


class Bundles(msgspec.Struct):
    """One config's experiments: `labels[i]` names the flag set `flags[i]`."""

    name: str
    path: str
    labels: list[str] = []
    flags: list[Flags] = []
    sources: dict[str, str] = {}  # flag -> field path that produces it, for conflict messages

    def add(self, label: str, flags: Flags, *, dedupe: bool, source: Callable[[str], str]) -> None:
        """`source(flag)` names the field path that produces each flag."""
        if dedupe and flags in self.flags:
            return  # two field combinations that give the same command line are one experiment
        self.labels.append(label)
        self.flags.append(flags)
        for flag in flags:
            self.sources.setdefault(flag, source(flag))


def as_list(value: Any) -> list[Any] | None:
    """A field's values: None when the field is absent or an empty list (skipped, like parameters)."""
    if value is None:
        return None
    if isinstance(value, list):
        return value or None
    return [value]


def presets_of(cfg: Any, base: str) -> list[tuple[str, str]] | None:
    if cfg.preset is not None and cfg.presets:
        raise ExpandError("give either `preset` or `presets`, not both", f"{base}.preset")
    if cfg.preset is not None:
        return [(cfg.preset, f"{base}.preset")]
    if cfg.presets:
        seen: set[str] = set()
        out = []
        for i, name in enumerate(cfg.presets):
            if name in seen:
                raise ExpandError(f"preset `{name}` is listed twice", f"{base}.presets[{i}]")
            seen.add(name)
            out.append((name, f"{base}.presets[{i}]"))
        return out
    return None


def field_values(cfg: Any, fields: tuple[str, ...], base: str) -> dict[str, list[tuple[Any, str]]]:
    """Given fields → [(value, path of the value)], in field order."""
    out: dict[str, list[tuple[Any, str]]] = {}
    for field in fields:
        raw = getattr(cfg, field)
        values = as_list(raw)
        if values is None:
            continue
        if isinstance(raw, list):
            out[field] = [(v, f"{base}.{field}[{i}]") for i, v in enumerate(values)]
        else:
            out[field] = [(raw, f"{base}.{field}")]
    return out


def combos(fields: dict[str, list[tuple[Any, str]]]) -> Iterator[dict[str, Any]]:
    names = list(fields)
    for combo in itertools.product(*(fields[n] for n in names)):
        yield {n: v for n, (v, _) in zip(names, combo, strict=True)}


def label(combo: Mapping[str, Any]) -> str:
    return ",".join(f"{k}={value_text(v)}" for k, v in combo.items())


def config_bundles(
    cfg: Any, *, name: str, base: str, kind: str, presets: Mapping[str, Any], fields: tuple[str, ...], mixed: str,
    preset_flags: Callable[[str, str], list[tuple[str, Flags]]],
    value: Callable[[str, Any, str], Any],
    flags_of: Callable[[Mapping[str, Any]], Flags],
    by_field: bool = False,
) -> Bundles | None:
    """A *_config at `base` as the bundle dimension `name`: the `kind` presets it names (`preset_flags(preset,
    path)` gives each one's labelled flag sets), else every combination of its per-field values (`value`
    checks one, `flags_of` turns a combination into flags). `mixed` refuses presets and fields together.
    A flag's source is the config, or with `by_field` the given field of the flag's name."""
    if cfg is None:
        return None
    chosen = presets_of(cfg, base)
    given = field_values(cfg, fields, base)
    if chosen and given:
        raise ExpandError(mixed, f"{base}.{next(iter(given))}")
    if chosen:
        out = Bundles(name=name, path=f"{base}.presets" if cfg.presets else f"{base}.preset")
        for preset, path in chosen:
            if preset not in presets:
                raise ExpandError(f"unknown {kind} preset `{preset}`; known presets: {', '.join(presets)}", path)
            for preset_label, flags in preset_flags(preset, path):
                out.add(preset_label, flags, dedupe=False, source=lambda _, path=path: path)
        return out
    if not given:
        return None
    normal = {f: [(value(f, v, p), p) for v, p in vals] for f, vals in given.items()}

    def source(flag: str) -> str:
        field = next((f for f in normal if canonical(f) == canonical(flag)), None) if by_field else None
        return f"{base}.{field}" if field else base

    out = Bundles(name=name, path=base)
    for combo in combos(normal):
        out.add(label(combo), flags_of(combo), dedupe=True, source=source)
    return out
