"""Write tiny training runs in the layouts real trainers write, with a known planted update.

Every writer returns the run root. Weights come from real transformers models built from tiny
configs (hidden 32, 2 layers, vocab 100), so tensor names, shapes, tying and sharding are exactly
what `save_pretrained` / `torch.save` / verl FSDP / PEFT produce.
"""

from __future__ import annotations

import json
import os
import shutil
import zlib
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import torch

Update = Callable[[str, torch.Tensor, int], torch.Tensor]

_COMMON = dict(
    hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, vocab_size=100, max_position_embeddings=64,
    pad_token_id=0, bos_token_id=1, eos_token_id=2,
)  # fmt: skip
# Tiny configs per architecture (transformers model_type → config kwargs).
ARCH_CONFIGS: dict[str, dict[str, object]] = {
    "llama": _COMMON,
    "qwen2": _COMMON,
    "qwen3": {**_COMMON, "head_dim": 8},
    "mistral": _COMMON,
    "gemma": {**_COMMON, "head_dim": 8},
    "phi3": _COMMON,
    "gpt2": dict(n_embd=32, n_layer=2, n_head=4, vocab_size=100, n_positions=64,
                 bos_token_id=1, eos_token_id=2),  # fmt: skip
    "gpt_neox": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                     num_attention_heads=4, vocab_size=100, max_position_embeddings=64,
                     bos_token_id=1, eos_token_id=2),  # fmt: skip
    "mixtral": {**_COMMON, "num_local_experts": 4, "num_experts_per_tok": 2},
    "qwen2_moe": {**_COMMON, "num_experts": 4, "num_experts_per_tok": 2,
                  "moe_intermediate_size": 16, "shared_expert_intermediate_size": 32},
    "qwen3_moe": {**_COMMON, "head_dim": 8, "num_experts": 4, "num_experts_per_tok": 2,
                  "moe_intermediate_size": 16},
}  # fmt: skip

LAYOUTS = ("safetensors", "sharded", "bin", "bin-sharded")
TRAINER_FILES = ("optimizer.pt", "scheduler.pt", "rng_state.pth", "training_args.bin")


def tiny_config(arch: str, **overrides: object):
    """A transformers config for a tiny model of ``arch``."""
    from transformers import AutoConfig

    return AutoConfig.for_model(arch, **{**ARCH_CONFIGS[arch], **overrides})


def tiny_model(arch: str, *, seed: int = 0, dtype: torch.dtype = torch.float32, **overrides):
    """A randomly initialised tiny causal LM of ``arch`` (deterministic in ``seed``)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(arch, **overrides))
    with torch.no_grad():  # some inits leave exact zeros/ones; make every weight distinct
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return model.to(dtype).eval()


def _gen(name: str, seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))


def planted_direction(name: str, shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    """The fixed float32 direction of the planted update: rank 1 per 2-D slice, dense for 1-D."""
    g = _gen(name, seed)
    if len(shape) < 2:
        return 0.05 * torch.randn(shape, generator=g)
    u = torch.randn((*shape[:-1], 1), generator=g)
    v = torch.randn((*shape[:-2], 1, shape[-1]), generator=g)
    return 0.05 * u * v


def planted_update(name: str, w0: torch.Tensor, step: int, seed: int = 0) -> torch.Tensor:
    """W_step = W_0 + step · D(name), D a fixed rank-1 direction; the default update."""
    if not w0.is_floating_point():
        return w0.clone()
    d = planted_direction(name, tuple(w0.shape), seed)
    return (w0.float() + step * d).to(w0.dtype)


def save_model(
    model, directory: Path, layout: str = "safetensors", *, max_shard_size: str = "40KB"
) -> Path:
    """Save ``model`` the way a trainer does, in one of LAYOUTS."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    if layout == "safetensors":
        model.save_pretrained(d)
    elif layout == "sharded":
        model.save_pretrained(d, max_shard_size=max_shard_size)
        assert (d / "model.safetensors.index.json").is_file(), "model too small to shard"
    elif layout in ("bin", "bin-sharded"):
        model.config.save_pretrained(d)
        write_bin(d, model.state_dict(), sharded=layout == "bin-sharded")
    else:
        raise ValueError(f"layout must be one of {LAYOUTS}; got {layout!r}.")
    return d


def write_bin(directory: Path, state: Mapping[str, torch.Tensor], *, sharded: bool = False,
              shard_bytes: int = 40_000) -> list[Path]:  # fmt: skip
    """torch.save a state dict as pytorch_model.bin, or shards plus pytorch_model.bin.index.json."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    if not sharded:
        torch.save(dict(state), d / "pytorch_model.bin")
        return [d / "pytorch_model.bin"]
    groups: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for k, t in state.items():
        nb = t.numel() * t.element_size()
        if groups[-1] and size + nb > shard_bytes:
            groups.append({})
            size = 0
        groups[-1][k] = t
        size += nb
    n = len(groups)
    assert n > 1, "state too small to shard"
    weight_map, files = {}, []
    for i, g in enumerate(groups, 1):
        fname = f"pytorch_model-{i:05d}-of-{n:05d}.bin"
        torch.save(g, d / fname)
        files.append(d / fname)
        weight_map.update(dict.fromkeys(g, fname))
    total = sum(t.numel() * t.element_size() for t in state.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (d / "pytorch_model.bin.index.json").write_text(json.dumps(index, indent=2))
    return files


def write_trainer_files(directory: Path, step: int) -> None:
    """The non-weight files the HF Trainer leaves beside the weights; any attempt to load them fails."""
    d = Path(directory)
    for name in TRAINER_FILES:
        (d / name).write_bytes(b"\x80\x04NOT A PICKLE: must never be loaded " + name.encode())
    state = {"global_step": step, "log_history": [], "best_metric": None}
    (d / "trainer_state.json").write_text(json.dumps(state))


def write_hf_run(
    root: Path,
    arch: str = "llama",
    steps: Iterable[int] = (0, 1, 2, 4),
    layout: str = "safetensors",
    dtype: torch.dtype = torch.bfloat16,
    seed: int = 0,
    update: Update | None = None,
    *,
    dirname: str = "checkpoint-{step}",
    trainer_files: bool = True,
    **config_overrides: object,
) -> Path:
    """Write ``root/<dirname.format(step)>`` per step, weights W_0 moved by ``update``.

    ``update(name, w0, step) -> w_step`` gets each parameter's base value (tied parameters once,
    under the name `named_parameters` gives); default `planted_update`.
    """
    root = Path(root)
    upd = update or (lambda n, w, s: planted_update(n, w, s, seed))
    model = tiny_model(arch, seed=seed, dtype=dtype, **config_overrides)
    params = dict(model.named_parameters())
    base = {n: p.detach().clone() for n, p in params.items()}
    for step in steps:
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(upd(n, base[n], step))
        d = save_model(model, root / dirname.format(step=step), layout)
        if trainer_files:
            write_trainer_files(d, step)
    return root


def write_state_dir(directory: Path, state: Mapping[str, torch.Tensor], layout: str = "safetensors",
                    config: Mapping[str, object] | None = None) -> Path:  # fmt: skip
    """Write a hand-made state dict as one checkpoint directory (safetensors / sharded / bin)."""
    from safetensors.torch import save_file

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    if config is not None:
        (d / "config.json").write_text(json.dumps(dict(config)))
    state = {k: v.contiguous() for k, v in state.items()}
    if layout == "safetensors":
        save_file(state, d / "model.safetensors", metadata={"format": "pt"})
    elif layout == "sharded":
        names = list(state)
        half = len(names) // 2
        parts = [names[:half], names[half:]]
        weight_map = {}
        for i, part in enumerate(parts, 1):
            fname = f"model-{i:05d}-of-00002.safetensors"
            save_file({k: state[k] for k in part}, d / fname, metadata={"format": "pt"})
            weight_map.update(dict.fromkeys(part, fname))
        index = {"metadata": {"total_size": 0}, "weight_map": weight_map}
        (d / "model.safetensors.index.json").write_text(json.dumps(index))
    elif layout in ("bin", "bin-sharded"):
        write_bin(d, state, sharded=layout == "bin-sharded", shard_bytes=1)
    else:
        raise ValueError(f"layout must be one of {LAYOUTS}; got {layout!r}.")
    return d


def write_peft_run(
    root: Path,
    base_dir: Path,
    steps: Iterable[int] = (1, 2),
    *,
    r: int = 4,
    lora_alpha: float = 8,
    target_modules: Iterable[str] = ("q_proj", "v_proj", "down_proj"),
    seed: int = 0,
    dirname: str = "checkpoint-{step}",
    **lora_kwargs: object,
) -> Path:
    """Save a PEFT LoRA adapter per step on the model in ``base_dir``, with non-zero random B."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    root = Path(root)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    cfg = LoraConfig(r=r, lora_alpha=lora_alpha, target_modules=list(target_modules), **lora_kwargs)
    peft_model = get_peft_model(model, cfg)
    for step in steps:
        g = torch.Generator().manual_seed(seed * 7919 + step)
        with torch.no_grad():
            for n, p in peft_model.named_parameters():
                if "lora_" in n:
                    p.copy_(0.1 * torch.randn(p.shape, generator=g))
        peft_model.save_pretrained(root / dirname.format(step=step))
    return root


# -- verl ------------------------------------------------------------------------------------


def _fsdp_worker(rank: int, world: int, store: str, jobs_file: str) -> None:
    """One gloo rank: every job's state dict as DTensors sharded on dim 0, saved as verl does."""
    import sys
    import traceback

    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")  # loopback, whatever the hostname names
    try:
        dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
        _save_dtensor_shards(init_device_mesh("cpu", (world,)), rank, world, jobs_file)
        dist.barrier()
    except BaseException:
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(1)
    # gloo's teardown can abort ("terminate called without an active exception") when the
    # peer closes first; the files are written and closed, so the process ends without it.
    sys.stdout.flush()
    os._exit(0)


def _fsdp_one_process(world: int, jobs_file: str) -> None:
    """Every rank in turn, in one process, over torch's fake process group (no sockets).

    The fake group's scatter moves nothing, so each rank's shard is copied into the buffer
    `distribute_tensor` allocated: the same padded storage a gloo scatter leaves.
    """
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.testing._internal.distributed.fake_pg import FakeStore

    for rank in range(world):
        dist.init_process_group("fake", store=FakeStore(), rank=rank, world_size=world)
        try:
            mesh = init_device_mesh("cpu", (world,))
            _save_dtensor_shards(mesh, rank, world, jobs_file, fill=True)
        finally:
            dist.destroy_process_group()


def _save_dtensor_shards(
    mesh: object, rank: int, world: int, jobs_file: str, *, fill: bool = False
) -> None:
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    for out_dir, state in torch.load(jobs_file, weights_only=True):
        local = {}
        for k, v in state.items():
            placement = Shard(0) if v.dim() > 0 else Replicate()
            local[k] = distribute_tensor(v, mesh, [placement])  # type: ignore[arg-type]
            if fill:
                with torch.no_grad():
                    shard = _chunk(v, world, rank) if v.dim() > 0 else v
                    local[k].to_local().copy_(shard)
        torch.save(local, Path(out_dir) / f"model_world_size_{world}_rank_{rank}.pt")


def _run_writers(argvs: list[str], timeout: float = 120) -> str | None:
    """Run one `python -c` per entry of `argvs` at once; None when all exit 0, else their output."""
    import subprocess
    import sys

    here = str(Path(__file__).parent)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", f"import sys; sys.path.insert(0, {here!r}); import checkpoints; {a}"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        for a in argvs
    ]  # fmt: skip
    outs = []
    for p in procs:
        try:
            outs.append(p.communicate(timeout=timeout)[0])
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            outs.append(f"timed out after {timeout} s\n" + p.communicate()[0])
    if all(p.returncode == 0 for p in procs):
        return None
    return "\n".join(
        f"[writer {i}, exit {p.returncode}]\n{out.strip()}"
        for i, (p, out) in enumerate(zip(procs, outs, strict=True))
    )


def write_fsdp_rank_files(
    jobs: list[tuple[Path, Mapping[str, torch.Tensor]]],
    world_size: int = 2,
    *,
    dtensor: bool = True,
    writer: str = "auto",
) -> str:
    """Write verl `model_world_size_<W>_rank_<R>.pt` files of full state dicts, split on dim 0.

    With ``dtensor`` the files hold real DTensors (Shard(0), uneven where rows do not divide),
    written by ``world_size`` gloo processes (``writer="gloo"``), or by one process over torch's
    fake process group (``writer="one-process"``), which pickles the same objects and padded
    storages (only torch 2.6's per-process mesh hash differs). ``"auto"`` tries gloo twice and
    falls back, with a warning, where gloo cannot start (a sandbox whose loopback sockets it
    cannot use). Without ``dtensor`` each rank holds its plain row block.
    Returns the writer that wrote the files ("plain", "gloo" or "one-process").
    """
    for out_dir, _ in jobs:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
    if not dtensor:
        for out_dir, state in jobs:
            for rank in range(world_size):
                local = {
                    k: v.clone() if v.dim() == 0 else _chunk(v, world_size, rank)
                    for k, v in state.items()
                }  # fmt: skip
                torch.save(local, Path(out_dir) / f"model_world_size_{world_size}_rank_{rank}.pt")
        return "plain"
    gloo_tries = {"auto": 2, "gloo": 1, "one-process": 0}.get(writer)
    if gloo_tries is None:
        raise ValueError(f"writer must be auto, gloo or one-process, not {writer!r}")
    import tempfile
    import warnings

    with tempfile.TemporaryDirectory() as tmp:
        jobs_file = os.path.join(tmp, "jobs.pt")
        torch.save([(str(d), dict(s)) for d, s in jobs], jobs_file)
        failed = None
        for attempt in range(gloo_tries):
            store = os.path.join(tmp, f"store-{attempt}")
            failed = _run_writers(
                [
                    f"checkpoints._fsdp_worker({r}, {world_size}, {store!r}, {jobs_file!r})"
                    for r in range(world_size)
                ]
            )
            if failed is None:
                return "gloo"
        if writer == "gloo":
            raise RuntimeError(f"FSDP gloo writers failed:\n{failed}")
        if failed is not None:
            warnings.warn(
                "gloo could not start here, so the DTensor rank files were written in one "
                f"process over torch's fake process group. gloo said:\n{failed}",
                stacklevel=2,
            )
        one = _run_writers([f"checkpoints._fsdp_one_process({world_size}, {jobs_file!r})"])
        if one is not None:
            raise RuntimeError(f"FSDP writer failed:\n{one}" + (f"\n{failed}" if failed else ""))
        return "one-process"


def _chunk(t: torch.Tensor, world: int, rank: int) -> torch.Tensor:
    parts = torch.chunk(t, world, dim=0)  # the split torch's Shard(0) uses
    if rank < len(parts):
        return parts[rank].clone()
    return t[:0].clone()


def write_verl_run(
    root: Path,
    arch: str = "llama",
    steps: Iterable[int] = (0, 2, 4),
    *,
    weights: str = "hf",
    world_size: int = 2,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    update: Update | None = None,
    jobs: list[tuple[Path, dict[str, torch.Tensor]]] | None = None,
    **config_overrides: object,
) -> Path:
    """verl: `global_step_<N>/actor/{huggingface/, model_world_size_<W>_rank_<R>.pt}`.

    ``weights``: "hf" (huggingface/ holds model.safetensors; rank files are not written),
    "dtensor" or "plain" (huggingface/ holds only config and tokenizer; the rank files hold the
    in-memory state dict, as DTensors or plain row blocks). Pass a ``jobs`` list to collect the
    rank files to write instead, then write several runs in one `write_fsdp_rank_files` call.
    """
    root = Path(root)
    upd = update or (lambda n, w, s: planted_update(n, w, s, seed))
    model = tiny_model(arch, seed=seed, dtype=dtype, **config_overrides)
    params = dict(model.named_parameters())
    base = {n: p.detach().clone() for n, p in params.items()}
    deferred = jobs is not None
    jobs = [] if jobs is None else jobs
    steps = list(steps)
    for step in steps:
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(upd(n, base[n], step))
        actor = root / f"global_step_{step}" / "actor"
        hf = actor / "huggingface"
        if weights == "hf":
            model.save_pretrained(hf)
        else:
            model.config.save_pretrained(hf)
            (hf / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 64}))
            (hf / "tokenizer.json").write_text(json.dumps({"version": "1.0", "model": {}}))
            state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            jobs.append((actor, state))
        for rank in range(world_size):  # optimizer and extra state beside the model shards
            for kind in ("optim", "extra_state"):
                (actor / f"{kind}_world_size_{world_size}_rank_{rank}.pt").write_bytes(b"garbage")
    if jobs and not deferred:
        write_fsdp_rank_files(jobs, world_size, dtensor=weights == "dtensor")
    (root / "latest_checkpointed_iteration.txt").write_text(str(max(steps)))
    return root


def st_state(directory: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint directory, read independently with safetensors / torch.load."""
    from safetensors.torch import load_file

    d = Path(directory)
    out: dict[str, torch.Tensor] = {}
    for f in sorted(d.glob("*.safetensors")):
        out.update(load_file(f))
    for f in sorted(d.glob("pytorch_model*.bin")):
        out.update(torch.load(f, weights_only=True))
    return out


def small_state(seed: int) -> dict[str, torch.Tensor]:
    """Four llama-named tensors (embedding, q_proj, down_proj, norm) of random values."""
    g = torch.Generator().manual_seed(seed)
    return {
        "model.embed_tokens.weight": torch.randn(10, 4, generator=g),
        "model.layers.0.self_attn.q_proj.weight": torch.randn(4, 4, generator=g),
        "model.layers.0.mlp.down_proj.weight": torch.randn(4, 6, generator=g),
        "model.norm.weight": torch.randn(4, generator=g),
    }


def same_weights_run(
    root: Path, layout: str = "safetensors", steps: Iterable[int] = (0, 1)
) -> Path:
    """A run whose checkpoints all hold one tiny llama's float32 weights: a run to copy and break."""
    model = tiny_model("llama")
    for step in steps:
        save_model(model, Path(root) / f"checkpoint-{step}", layout)
    return Path(root)


def copy_run(src: Path, tmp_path: Path) -> Path:
    """A copy of run `src` at tmp_path/run (symlinks kept as links), to break."""
    import shutil

    return Path(shutil.copytree(src, tmp_path / "run", symlinks=True))


def line_run(root: Path, seed: int, name: str = "model.layers.0.self_attn.q_proj.weight") -> Path:
    """θ_s = θ_0 + s·D for one 8×8 attention matrix (plus a norm), saved at steps 0, 1, 2, 4."""
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(seed)
    w0, d = torch.randn(8, 8, generator=g), torch.randn(8, 8, generator=g) / 8
    for s in (0, 1, 2, 4):
        ck = root / f"checkpoint-{s}"
        ck.mkdir(parents=True)
        save_file({name: w0 + s * d, "model.norm.weight": torch.ones(8)}, ck / "model.safetensors")
    return root


def copy_demo(runs: Path, dest: Path) -> Path:
    """A copy of the quick demo's runs at dest (as `opdlens demo --out X` leaves them in X/runs)."""
    shutil.copytree(runs, dest, symlinks=True)
    return dest
