"""`chattune doctor`: what this machine has, and whether a config's training run fits — here or on a named card.

The answer is the run plan's own memory estimate (`chattune.plan.memory`), so `doctor` and `train` cannot
disagree. The model's shape needs only its config.json (a GGUF header, a local folder, a cached Hub id); when
none is readable (offline, another machine) the shipped shape table answers for the known families.
"""
from __future__ import annotations

import importlib.util
import os
import platform
from dataclasses import dataclass

from ..config import Config
from ..errors import ConfigError, ModelError
from ..plan import KNOWN_MODELS, Capabilities, GiB, RunPlan, known_name, make_plan, package_versions, probe_capabilities
from .load import read_model_config

_OPTIONAL = {"flash_attn": "flash-attn", "bitsandbytes": "bitsandbytes", "liger_kernel": "liger-kernel",
             "deepspeed": "deepspeed"}


def machine_info() -> dict:
    """Python/package versions, optional accelerators, CPU/RAM and CUDA devices (free VRAM, bf16)."""
    import psutil
    import torch

    vm = psutil.virtual_memory()
    info: dict = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": {k: v for k, v in package_versions().items() if k not in _OPTIONAL.values()},
        "optional": {mod: importlib.util.find_spec(mod) is not None for mod in _OPTIONAL},
        "cpu_count": os.cpu_count(),
        "ram_total_gb": round(vm.total / GiB, 2),
        "ram_free_gb": round(vm.available / GiB, 2),
        "cuda": torch.cuda.is_available(),
        "cuda_version": torch.version.cuda,
        "gpus": [],
    }
    if info["cuda"]:
        for i in range(torch.cuda.device_count()):
            free, total = torch.cuda.mem_get_info(i)
            info["gpus"].append({"index": i, "name": torch.cuda.get_device_name(i),
                                 "total_gb": round(total / GiB, 2), "free_gb": round(free / GiB, 2),
                                 "bf16": bool(torch.cuda.is_bf16_supported())})
    return info


def plan_for(cfg: Config, caps: Capabilities) -> RunPlan:
    """The run plan `chattune train` would make for `cfg` on the machine `caps` describes, reading only the model's
    config (or the shipped shape table when it cannot be read and the family is known)."""
    try:
        model_config = read_model_config(cfg.model)
    except ModelError as e:
        if known_name(cfg.model.name_or_path) is None:
            raise ModelError(f"{e}\n(offline, chattune knows the shapes of: {', '.join(sorted(KNOWN_MODELS))})") \
                from None
        model_config = None  # make_plan takes the shape from the table
    return make_plan(cfg, caps, model_config=model_config)


@dataclass(frozen=True)
class DoctorReport:
    """`machine_info()`, and for a config the plan (with its memory estimate) or why it cannot run there."""

    machine: dict
    plan: RunPlan | None = None
    problem: str | None = None          # the plan's refusal (e.g. qlora on a CPU machine)
    target: str | None = None           # the machine planned for


def doctor(cfg: Config | None = None, *, gpu: str | None = None, gpu_memory: str | None = None) -> DoctorReport:
    """Machine report, plus the run plan and memory estimate when a config is given.

    Args:
        cfg: the training config to check, or None for the machine only.
        gpu: plan for a named card instead of this machine (see `chattune.plan.GPUS`).
        gpu_memory: plan for a CUDA card of this size ("24GB"); with `gpu`, overrides its size.
    """
    info = machine_info()
    if cfg is None:
        return DoctorReport(machine=info)
    caps = Capabilities.for_card(gpu, gpu_memory) if (gpu or gpu_memory) else probe_capabilities()
    try:
        return DoctorReport(machine=info, plan=plan_for(cfg, caps), target=caps.label)
    except ConfigError as e:
        hint = "" if caps.described else "; to ask about a GPU, add --gpu NAME or --gpu-memory 24GB"
        return DoctorReport(machine=info, problem=f"{e}{hint}", target=caps.label)
