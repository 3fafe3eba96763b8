"""The Train page's form, generated from the config schema, and its check.

The form is `Config`'s own JSON schema flattened to dotted keys (every field with its description and
default). What the browser sends back is the route the CLI takes: an optional YAML text plus
``key=value`` overrides, read by `chattune.config.load_config`; the config's validator reports bad values
with the same lines as ``chattune train`` (`ConfigError.problems`), which the page shows next to the field.
"""
from __future__ import annotations

import json
import tempfile
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import Config, load_config
from ..errors import ChattuneError, ConfigError, ModelError
from .paths import UI_STATE, PathError, Roots

# Shown unfolded; every other field sits under "advanced". A presentation choice, not a config rule.
BASIC = ("model.name_or_path", "data.train", "data.eval", "data.system", "data.max_length", "data.eval_ratio",
         "method.type", "method.lora.r", "method.lora.alpha", "train.epochs", "train.max_steps", "train.lr",
         "train.batch_size", "train.grad_accum", "train.logging_steps", "train.save_steps", "train.report_to",
         "output_dir")
PATH_LISTS = ("data.train", "data.eval")  # edited as file paths, one per line


def form_fields() -> list[dict]:
    """Every config field as ``{key, section, kind, default, description, options, advanced}``, in the order
    and with the descriptions of ``chattune config`` (`chattune.config_doc.field_docs`).

    kind: ``bool`` (checkbox), ``choice`` (options), ``text`` (number or string, typed as in YAML),
    ``paths`` (data files) or ``yaml`` (lists, maps, unions: edited as a YAML value, like a CLI override).
    """
    from ..config_doc import field_docs

    return [{"key": d.key, "section": d.key.split(".")[0], "default": _jsonable(d.default),
             "description": d.description, "advanced": d.key not in BASIC, **_kind(d.key, _annotation(d.key))}
            for d in field_docs() if "[]" not in d.key]


def _jsonable(v):
    return json.loads(json.dumps(v, default=str))


def _annotation(key: str):
    model: Any = Config
    *sections, name = key.split(".")
    for part in sections:
        model = model.model_fields[part].annotation
    return model.model_fields[name].annotation


def _kind(key: str, ann) -> dict:
    if key in PATH_LISTS:
        return {"kind": "paths", "options": None}
    alts = typing.get_args(ann) if typing.get_origin(ann) in (typing.Union, types.UnionType) else (ann,)
    nullable = type(None) in alts
    real = [a for a in alts if a is not type(None)]
    if len(real) == 1 and typing.get_origin(real[0]) is typing.Literal:
        return {"kind": "choice", "options": ([None] if nullable else []) + list(typing.get_args(real[0]))}
    if real == [bool]:
        return {"kind": "choice", "options": [None, True, False]} if nullable else {"kind": "bool", "options": None}
    if len(real) == 1 and real[0] in (int, float, str):
        return {"kind": "text", "options": None, "type": {int: "integer", float: "number", str: "string"}[real[0]],
                "nullable": nullable}
    return {"kind": "yaml", "options": None}


def overrides_from_form(values: dict[str, object], roots: Roots) -> list[str]:
    """``key=value`` overrides (as typed after ``chattune train CONFIG``) from the form's changed fields.

    Strings are JSON-quoted for string fields (so ``yes`` stays a string); numbers go as typed, so a bad
    one reaches the validator and gets its message; data paths are resolved inside the allowed roots.

    Raises:
        ConfigError: a data path outside the roots (``problems`` names the field).
    """
    kinds = {f["key"]: f for f in form_fields()}
    out = []
    for key, value in values.items():
        spec = kinds.get(key)
        if spec is None:
            out.append(f"{key}={value}")  # unknown: the validator names it
        elif spec["kind"] == "paths":
            out.append(f"{key}={json.dumps(_resolve_paths(key, value, roots))}")
        elif spec["kind"] in ("bool", "choice"):
            out.append(f"{key}={json.dumps(value)}")
        elif spec["kind"] == "text" and spec.get("type") == "string" and isinstance(value, str):
            out.append(f"{key}={'null' if value == '' and spec.get('nullable') else json.dumps(value)}")
        else:
            out.append(f"{key}={value}")
    return out


def _resolve_paths(key: str, value: object, roots: Roots) -> list[str]:
    items = value if isinstance(value, list) else str(value or "").splitlines()
    paths = []
    for item in (str(x).strip() for x in items):
        if not item:
            continue
        try:
            paths.append(str(roots.resolve(item)))
        except PathError as e:
            raise ConfigError(str(e), problems=((key, f"{key}: {e}"),)) from None
    return paths


@dataclass
class ConfigCheck:
    """The result of `check_config`: the config (when valid), problems per field, and the memory estimate."""

    config: Config | None = None
    errors: dict[str, list[str]] = field(default_factory=dict)
    estimate: dict | None = None
    plan: list[dict] | None = None   # the run plan's decisions with their reasons

    def add(self, key: str, line: str) -> None:
        self.errors.setdefault(key, []).append(line)

    def as_json(self) -> dict:
        return {"ok": not self.errors and self.config is not None, "errors": self.errors,
                "config_yaml": self.config.to_yaml() if self.config else None, "estimate": self.estimate,
                "plan": self.plan,
                "output_dir": self.config.output_dir if self.config else None}


def check_config(roots: Roots, yaml_text: str | None, values: dict[str, object], *,
                 estimate: bool = True) -> ConfigCheck:
    """Validate the Train page's config the way ``chattune train`` / ``chattune doctor`` would.

    Args:
        roots: allowed folders; data files and local models must lie inside them, output_dir inside the runs folder.
        yaml_text: a whole YAML config (the YAML tab), or None for the defaults.
        values: changed form fields, ``{dotted key: value}``, applied on top as overrides.
        estimate: also report the run plan's memory estimate, as `chattune doctor` does (needs the model's
            config.json, or a known family's shape).

    Returns:
        A `ConfigCheck`; errors are keyed by the form field they belong to ("" = the config as a whole).
    """
    res = ConfigCheck()
    try:
        overrides = overrides_from_form(values, roots)
        cfg = _load(roots, yaml_text, overrides)
    except ConfigError as e:
        for key, line in e.problems or (("", str(e)),):
            res.add(_field_of(key), line)
        return res
    except ChattuneError as e:
        res.add("", str(e))
        return res
    _check_places(cfg, roots, res)
    if res.errors:
        return res
    res.config = cfg
    if estimate:
        from ..model.doctor import plan_for
        from ..plan import probe_capabilities

        try:
            plan = plan_for(cfg, probe_capabilities())  # what `chattune doctor CONFIG` shows
        except ChattuneError as e:
            res.add("model.name_or_path" if isinstance(e, ModelError) else "", str(e))
            res.config = None
            return res
        res.estimate = plan.memory.to_dict() if plan.memory is not None else None
        res.plan = plan_rows(plan.to_dict())
    return res


def _load(roots: Roots, yaml_text: str | None, overrides: list[str]) -> Config:
    """`load_config` on the YAML text (through a temp file, as the CLI reads a file) plus the overrides."""
    if not (yaml_text or "").strip():
        return load_config(None, overrides)
    state = roots.runs / UI_STATE
    state.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=state) as tmp:
        path = Path(tmp) / "config.yaml"
        path.write_text(yaml_text or "", encoding="utf-8")
        try:
            return load_config(path, overrides)
        except ConfigError as e:  # name the YAML tab, not a temp file the user never saw
            msg = str(e).replace(str(path), "the YAML")
            problems = tuple((k, v.replace(str(path), "the YAML")) for k, v in e.problems)
            raise ConfigError(msg, problems=problems) from None


def _field_of(key: str) -> str:
    """The form field a validator key belongs to (``data.train.0.path`` → ``data.train``)."""
    known = {f["key"] for f in form_fields()}
    parts = key.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in known:
            return ".".join(parts[:n])
    return ""


def _check_places(cfg: Config, roots: Roots, res: ConfigCheck) -> None:
    """Data files and local models inside the roots (paths made absolute), output_dir inside the runs folder."""
    if not cfg.data.train:
        res.add("data.train", "data.train: no training file; pick one (Data page) or type its path")
    for key, sources in (("data.train", cfg.data.train), ("data.eval", cfg.data.eval)):
        for src in sources:
            if src.path is None:  # a Hub dataset (hub:), no local path to place
                continue
            try:
                src.path = str(roots.resolve(src.path))
            except PathError as e:
                res.add(key, f"{key}: {e}")
    from .data_view import local_or_hub

    for key in ("model.name_or_path", "model.tokenizer"):
        name = key.split(".")[1]
        value = getattr(cfg.model, name)
        if value:
            try:  # a local folder must lie inside the roots; a Hub id or alias passes as is
                setattr(cfg.model, name, local_or_hub(value, roots))
            except PathError as e:
                res.add(key, f"{key}: {e}")
    out = Path(cfg.output_dir).expanduser()
    out = (out if out.is_absolute() else roots.runs / out).resolve()
    if not out.is_relative_to(roots.runs.resolve()) or out == roots.runs.resolve():
        res.add("output_dir", f"output_dir: {cfg.output_dir} is not a folder inside the runs folder {roots.runs}")
        return
    cfg.output_dir = str(out)
    from ..rundir.layout import existing_run_files

    held = existing_run_files(out)
    if held:
        res.add("output_dir", f"output_dir: {out} already holds a run ({', '.join(held[:3])}); pick a new name, "
                "or resume that run from the Runs page")


def plan_rows(plan: dict) -> list[dict]:
    """``[{decision, value, reason}]`` for each decision of a run plan (`RunPlan.to_dict()` or a run's plan.json)
    that carries a reason."""
    reasons = plan.get("reasons") or {}
    return [{"decision": k, "value": plan.get(k), "reason": why} for k, why in reasons.items()]
