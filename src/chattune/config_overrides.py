"""The command line's ``key.sub=value`` overrides of a config (`chattune train CONFIG train.lr=1e-4`):
parsed into a nested dict and laid over the YAML's before validation."""
from __future__ import annotations

import yaml

from .errors import ConfigError


def parse_overrides(overrides: list[str]) -> dict:
    """Turn ``["train.lr=1e-4", "method.lora.r=8"]`` into a nested dict; values are parsed as YAML."""
    out: dict = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key.sub=value (e.g. train.lr=1e-4)")
        key, raw = item.split("=", 1)
        value = yaml.safe_load(raw) if raw != "" else ""
        node = out
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r} conflicts with another override of {p!r}")
        node[parts[-1]] = value
    return out


def deep_merge(base: dict, extra: dict) -> dict:
    """`extra` laid over `base`, nested dicts merged key by key (how overrides apply to a config)."""
    merged = dict(base)
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(merged.get(k), dict):
            merged[k] = deep_merge(merged[k], v)
        else:
            merged[k] = v
    return merged
