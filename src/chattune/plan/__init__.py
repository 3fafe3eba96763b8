"""The run plan: config + machine → every automatic decision with its reason, and the one memory model.

``from chattune.plan import make_plan, RunPlan`` is the whole interface most code needs.
"""
from .memory import FIT_SHARE, GPUS, GiB, MemoryEstimate, estimate_memory, parse_bytes
from .run_plan import (
    PACKAGES,
    Capabilities,
    RunPlan,
    describe,
    inference_plan,
    make_plan,
    package_versions,
    probe_capabilities,
)
from .shapes import KNOWN_MODELS, ModelShape, flops_per_token, known_config, known_name, shape_of

__all__ = ["FIT_SHARE", "GPUS", "GiB", "KNOWN_MODELS", "PACKAGES", "Capabilities",
           "MemoryEstimate", "ModelShape", "RunPlan", "describe", "estimate_memory", "flops_per_token",
           "inference_plan", "known_config", "known_name", "make_plan", "package_versions", "parse_bytes",
           "probe_capabilities", "shape_of"]
