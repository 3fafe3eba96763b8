"""Multi-process training through the existing engines: torchrun + transformers.Trainer (DDP), FSDP2 or DeepSpeed.

chattune does not distribute anything itself. `launch` re-runs ``python -m chattune train ...`` under
``torch.distributed.run`` (torchrun); inside each process transformers.Trainer + accelerate do DDP/FSDP/ZeRO
from the kwargs `distributed_kwargs` returns. The helpers below make the rest rank-aware:
only the main process writes run-dir files, logs and prints; data is tokenised once (main process first).

Environment variables read (set by torchrun / accelerate launch / mpirun): RANK, WORLD_SIZE, LOCAL_RANK.
"""
from __future__ import annotations

import contextlib
import copy
import os
import subprocess
import sys
from pathlib import Path
from typing import Any
from collections.abc import Iterator

from ..errors import ConfigError

# DeepSpeed configs. The JSON files in examples/deepspeed/ are these dicts written out (a test checks they agree),
# so `train.deepspeed: zero2` works from an installed wheel that has no examples/ folder.
# "auto" values are filled by transformers from TrainingArguments (batch, accumulation, clipping, bf16/fp16).
_DS_COMMON: dict[str, Any] = {
    "bf16": {"enabled": "auto"},
    "fp16": {"enabled": "auto", "loss_scale": 0, "loss_scale_window": 1000, "initial_scale_power": 16,
             "hysteresis": 2, "min_loss_scale": 1},
    "train_batch_size": "auto",
    "train_micro_batch_size_per_gpu": "auto",
    "gradient_accumulation_steps": "auto",
    "gradient_clipping": "auto",
    "steps_per_print": 1000000,
    "wall_clock_breakdown": False,
}
DEEPSPEED_PRESETS: dict[str, dict[str, Any]] = {
    "zero2": {**_DS_COMMON, "zero_optimization": {
        "stage": 2, "allgather_partitions": True, "allgather_bucket_size": 500000000, "overlap_comm": True,
        "reduce_scatter": True, "reduce_bucket_size": "auto", "contiguous_gradients": True}},
    "zero3": {**_DS_COMMON, "zero_optimization": {
        "stage": 3, "overlap_comm": True, "contiguous_gradients": True, "sub_group_size": 1000000000,
        "reduce_bucket_size": "auto", "stage3_prefetch_bucket_size": "auto",
        "stage3_param_persistence_threshold": "auto", "stage3_max_live_parameters": 1000000000,
        "stage3_max_reuse_distance": 1000000000,
        # Without this, ZeRO-3 saves empty placeholder weights and the run dir would hold no usable adapter.
        "stage3_gather_16bit_weights_on_model_save": True}},
}

_ENV_INSIDE_LAUNCH = ("LOCAL_RANK", "TORCHELASTIC_RUN_ID")


# ---------------------------------------------------------------------------------------------- rank helpers


def world_size() -> int:
    """Number of training processes (1 when not launched by torchrun/accelerate/mpirun)."""
    for var in ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE"):
        if os.environ.get(var):
            return int(os.environ[var])
    return 1


def process_rank() -> int:
    """Global rank of this process (0 when not distributed)."""
    for var in ("RANK", "PMI_RANK", "OMPI_COMM_WORLD_RANK"):
        if os.environ.get(var):
            return int(os.environ[var])
    return 0


def is_main_process() -> bool:
    """True on global rank 0: the one process that writes run-dir files, prints and logs to trackers.

    Read from the launcher's environment, so it is right before the process group exists (config
    printing, data reports) and costs nothing.
    """
    return process_rank() == 0


def is_distributed() -> bool:
    return world_size() > 1


def _accelerator_available() -> bool:
    import torch

    return torch.cuda.is_available() or (hasattr(torch, "xpu") and torch.xpu.is_available())


def _partial_state():
    """accelerate's process state. On a CPU-only machine it must be told cpu=True, or accelerate treats the
    torchrun processes as independent single-process runs (each one silently training alone)."""
    from accelerate import PartialState

    return PartialState(cpu=not _accelerator_available())


@contextlib.contextmanager
def main_process_first() -> Iterator[None]:
    """Run the block on the main process first; the others wait at a barrier, then run it.

    Wrap dataset building in it: rank 0 tokenises and fills the cache, the other ranks then read the cache
    instead of tokenising again. A no-op (no process group is created) when not distributed.
    """
    if not is_distributed():
        yield
        return
    with _partial_state().main_process_first():
        yield


def wait_for_everyone() -> None:
    """Barrier across all processes (no-op when not distributed)."""
    if is_distributed():
        _partial_state().wait_for_everyone()


def main_print(*args: Any, **kwargs: Any) -> None:
    """`print` on the main process only."""
    if is_main_process():
        print(*args, **kwargs)


# ---------------------------------------------------------------------------------------------- batch size


def global_batch_size(cfg, n_processes: int | None = None) -> int:
    """Sequences (or packs) per optimizer step across all processes: per-device × accumulation × world size."""
    n = world_size() if n_processes is None else n_processes
    return cfg.train.batch_size * cfg.train.grad_accum * n


def describe_batch(cfg, n_processes: int | None = None) -> str:
    """One line for the start-of-run banner, e.g. ``global batch 32 = 8 per device × 2 accumulation × 2 processes``."""
    n = world_size() if n_processes is None else n_processes
    unit = "packs" if cfg.train.packing else "sequences"
    return (f"global batch {global_batch_size(cfg, n)} {unit} = {cfg.train.batch_size} per device × "
            f"{cfg.train.grad_accum} accumulation × {n} process{'es' if n != 1 else ''} ({cfg.train.distributed})")


# ---------------------------------------------------------------------------------------------- TrainingArguments


def deepspeed_config(value: str | None) -> dict | str:
    """Resolve ``train.deepspeed``: None/'zero2'/'zero3' give the built-in preset (a fresh dict), else a JSON path.

    Raises:
        ConfigError: the path does not exist.
    """
    value = value or "zero2"
    name = value.lower()
    if name in DEEPSPEED_PRESETS:
        return copy.deepcopy(DEEPSPEED_PRESETS[name])
    path = Path(value)
    if not path.is_file():
        raise ConfigError(f"train.deepspeed: {value!r} is neither 'zero2', 'zero3' nor an existing JSON file "
                          "(see examples/deepspeed/zero2.json)")
    return str(path)


def decoder_layer_classes(model=None, name_or_path: str | None = None) -> list[str] | None:
    """Class names of the model's repeated decoder block (what FSDP wraps one unit per), e.g. ['Qwen3DecoderLayer'].

    Taken from the model's ``_no_split_modules`` (the same list transformers uses for device maps); with no
    model, from the architecture named in the config at `name_or_path` (no weights are read). None if unknown;
    accelerate then falls back to ``_no_split_modules`` itself when it wraps.
    """
    if model is not None:
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        names = getattr(base, "_no_split_modules", None)
        return list(names) if names else None
    if not name_or_path:
        return None
    try:
        import transformers
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(name_or_path)
        for arch in getattr(config, "architectures", None) or []:
            cls = getattr(transformers, arch, None)
            if cls is not None and getattr(cls, "_no_split_modules", None):
                return list(cls._no_split_modules)
    except Exception:  # noqa: BLE001 — GGUF file, offline hub id, remote code: leave the choice to accelerate
        return None
    return None


def _uses_every_trainable_param(model) -> bool:
    """MoE models route each token to some experts, so some trainable weights get no gradient in a step."""
    if model is None:
        return True
    config = getattr(model, "config", None)
    return not any(getattr(config, k, None) for k in ("num_experts", "num_local_experts", "n_routed_experts"))


def distributed_kwargs(cfg, *, model=None, plan=None) -> dict:
    """The distributed part of `transformers.TrainingArguments` for this config and launch.

    Merge it last: ``TrainingArguments(**{**base_kwargs, **distributed_kwargs(cfg, model=model)})``.

    Args:
        cfg: the chattune `Config` (reads ``train.distributed``, ``train.deepspeed``, ``method.type``,
            ``model.name_or_path``).
        model: the loaded (PEFT) model, if already built; used to name the decoder layer class for FSDP and to
            detect MoE. For DeepSpeed ZeRO-3, build TrainingArguments BEFORE loading the model (ZeRO-3 must
            see the arguments to shard weights while they load).
        plan: the run plan; its recompute decision (``gradient_checkpointing``) moves into ``fsdp_config`` under
            FSDP and ``activation_checkpointing`` is turned off. None: no recompute.

    Returns:
        kwargs: ``ddp_find_unused_parameters`` (False unless MoE: every LoRA/full parameter gets a gradient each
        step, and True costs a graph walk per step), and when more than one process runs: ``ddp_backend`` (nccl on
        CUDA, gloo on CPU) plus ``use_cpu`` on CPU-only machines; ``fsdp`` + ``fsdp_config`` (FSDP2, decoder layer
        wrapped, full state dict so the run dir gets a normal adapter file) or ``deepspeed``.

    Raises:
        ConfigError: DeepSpeed is not installed, or train.deepspeed names no preset and no file.
    """
    t = cfg.train
    out: dict[str, Any] = {"ddp_find_unused_parameters": not _uses_every_trainable_param(model)}
    if is_distributed():
        gpu = _accelerator_available()
        out["ddp_backend"] = "nccl" if gpu else "gloo"
        if not gpu:
            out["use_cpu"] = True  # see _partial_state: without it every CPU process trains alone
    # qlora with FSDP or ZeRO-3, train.deepspeed without distributed: deepspeed: refused at load
    # (config.cross_field_errors), so they never reach here.
    if t.distributed == "fsdp":
        layers = decoder_layer_classes(model, cfg.model.name_or_path)
        gc = bool(plan is not None and plan.gradient_checkpointing)
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        if base is not None and getattr(base, "is_activation_checkpointing", False):
            # transformers' own recompute was switched on at model setup; under FSDP it must be FSDP's
            # (an extra all-gather per layer otherwise), so move it there
            base.activation_checkpointing_disable()
            gc = True
        fsdp_config: dict[str, Any] = {
            "version": 2,
            "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
            "reshard_after_forward": True,
            # A full (rank-0 gathered) state dict: the run dir then holds a plain adapter_model.safetensors.
            "state_dict_type": "FULL_STATE_DICT",
            "cpu_ram_efficient_loading": False,
            # FSDP's own recompute; TrainingArguments.gradient_checkpointing would add an all-gather per layer.
            "activation_checkpointing": gc,
            # FSDP2 always keeps the original parameters (per-parameter sharding, so frozen base weights and
            # trainable LoRA weights can share a unit); this only matters if someone switches to version 1.
            "use_orig_params": True,
        }
        if layers:
            fsdp_config["transformer_layer_cls_to_wrap"] = layers
        out.update(fsdp=True, fsdp_config=fsdp_config, activation_checkpointing=False)
    elif t.distributed == "deepspeed":
        import importlib.util

        if importlib.util.find_spec("deepspeed") is None:
            raise ConfigError("train.distributed: deepspeed needs the deepspeed package: pip install deepspeed "
                              "(CUDA machines only)")
        out["deepspeed"] = deepspeed_config(t.deepspeed)
    return out


# ---------------------------------------------------------------------------------------------- launcher


def torchrun_command(argv: list[str], nproc: int, nnodes: int = 1, node_rank: int = 0,
                     master_addr: str = "127.0.0.1", master_port: int = 29500) -> list[str]:
    """The torchrun command line that runs ``python -m chattune ARGV`` in `nproc` processes on this node."""
    if nproc < 1:
        raise ConfigError(f"--nproc must be at least 1, got {nproc}")
    if nnodes < 1 or not 0 <= node_rank < nnodes:
        raise ConfigError(f"--node-rank must be in 0..{nnodes - 1} for --nnodes {nnodes}, got {node_rank}")
    return [sys.executable, "-m", "torch.distributed.run",
            f"--nproc-per-node={nproc}", f"--nnodes={nnodes}", f"--node-rank={node_rank}",
            f"--master-addr={master_addr}", f"--master-port={master_port}",
            "-m", "chattune", *argv]


def launch(argv: list[str], nproc: int, nnodes: int = 1, node_rank: int = 0,
           master_addr: str = "127.0.0.1", master_port: int = 29500, *, env: dict | None = None) -> int:
    """Re-run ``chattune ARGV`` under torchrun (one process per device) and wait for it.

    Args:
        argv: the chattune arguments for each process, without launch options,
            e.g. ``["train", "cfg.yaml", "train.lr=1e-4", "--resume"]``.
        nproc: processes on this node (GPUs on this node; any number on CPU, for testing).
        nnodes, node_rank, master_addr, master_port: multi-node rendezvous; run the same command on every node
            with its own --node-rank and the address of node 0 (see examples/multinode.md).
        env: extra environment variables for the processes.

    Returns:
        torchrun's exit code (0 when every process succeeded).

    Raises:
        ConfigError: bad numbers, already inside a launched process, or more processes than GPUs.
    """
    if any(os.environ.get(v) for v in _ENV_INSIDE_LAUNCH):
        raise ConfigError("--nproc given inside a process that torchrun/accelerate already launched; "
                          "drop --nproc (or run chattune without a launcher)")
    import torch

    if torch.cuda.is_available() and nproc > torch.cuda.device_count():
        raise ConfigError(f"--nproc {nproc} but this node has {torch.cuda.device_count()} GPU(s)")
    cmd = torchrun_command(argv, nproc, nnodes, node_rank, master_addr, master_port)
    child_env = dict(os.environ)
    # torchrun would set 1 anyway (with a warning); say it here so CPU runs don't oversubscribe cores either.
    child_env.setdefault("OMP_NUM_THREADS", "1")
    child_env.update(env or {})
    return subprocess.run(cmd, env=child_env).returncode


def train_argv(config: str, overrides: list[str] | None = None, resume: bool = False) -> list[str]:
    """The per-process ``chattune train`` arguments, i.e. the user's command without the launch options."""
    return ["train", str(config), *(overrides or []), *(["--resume"] if resume else [])]
