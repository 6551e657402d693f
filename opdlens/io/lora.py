"""PEFT LoRA adapters as a tensor source: the base's tensors plus a factored update per target."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import torch  # LoRA sources compute B @ A; opened only for adapter runs

from ..errors import CheckpointError
from .sources import SafetensorsSource, Spec, TensorSource, _canonical_map, load_pickle
from .weightfiles import regular_file

_LORA_KEY = re.compile(
    r"^(?P<module>.+)\.lora_(?P<emb>embedding_)?(?P<ab>[AB])(?:\.[A-Za-z_]\w*)?(?:\.weight)?$"
)
_PEFT_DEFAULT = 8  # LoraConfig's r and lora_alpha when adapter_config.json omits them
# Bounds on the pattern keys of an adapter_config.json: regular expressions from a file.
_MAX_PATTERNS = 10_000
_MAX_PATTERN_CHARS = 1_000
_PATTERN_SECONDS = 10
_LITERAL = re.compile(r"[A-Za-z0-9_.\-]*")  # '.' (any character) is the only operator here


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _read_adapter_config(path: Path) -> dict[str, object]:
    """adapter_config.json, its fields opdlens uses checked against what peft accepts."""
    regular_file(path)
    try:
        cfg = json.loads(path.read_bytes())
    except (ValueError, RecursionError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({type(e).__name__}).") from None
    if not isinstance(cfg, dict):
        raise CheckpointError(
            f"{path}: expected a JSON object (peft's LoraConfig); found a {type(cfg).__name__}."
        )

    def bad(field: str, expected: str) -> CheckpointError:
        return CheckpointError(
            f"{path}: '{field}' must be {expected}; found {json.dumps(cfg[field])[:80]}. Fix the "
            "adapter's config to the values it was trained with."
        )

    r = cfg.get("r", _PEFT_DEFAULT)
    if not isinstance(r, int) or isinstance(r, bool) or r < 1:
        raise bad("r", "a positive integer")
    if "lora_alpha" in cfg and not _number(cfg["lora_alpha"]):
        raise bad("lora_alpha", "a number")
    for flag in ("use_rslora", "fan_in_fan_out"):
        if cfg.get(flag) is not None and not isinstance(cfg[flag], bool):
            raise bad(flag, "true or false")
    for field, ok, expected in (
        ("rank_pattern", lambda v: isinstance(v, int) and not isinstance(v, bool) and v > 0,
         "an object of regular expressions to positive integers"),
        ("alpha_pattern", _number, "an object of regular expressions to numbers"),
    ):  # fmt: skip
        patterns = cfg.get(field) or {}
        if not isinstance(patterns, dict) or not all(ok(v) for v in patterns.values()):
            raise bad(field, expected)
        if len(patterns) > _MAX_PATTERNS:
            raise CheckpointError(
                f"{path}: {field} has {len(patterns)} keys; opdlens reads at most {_MAX_PATTERNS}."
            )
        for pat in patterns:
            if len(pat) > _MAX_PATTERN_CHARS:
                raise CheckpointError(
                    f"{path}: {field} key {pat[:40]!r}… is {len(pat)} characters long; opdlens "
                    f"matches keys of at most {_MAX_PATTERN_CHARS} (module names are far shorter)."
                )
            try:
                re.compile(rf"(.*\.)?(?:{pat})")
            except (re.error, RecursionError, OverflowError) as e:
                raise CheckpointError(
                    f"{path}: {field} key {pat[:80]!r} is not a valid regular expression ({e}); "
                    "peft matches these keys as regular expressions against module names."
                ) from None
    return cfg


def _pattern_values(
    patterns: Mapping[str, object], modules: list[str], default: float, where: Path
) -> dict[str, float]:
    r"""Per module, the value of the first key that matches it, as peft's get_pattern_key does
    (re.match(rf"(.*\.)?({key})$", module)); `default` where none does.

    Keys of literal characters and '.' cannot backtrack badly and are matched here. Any other
    key is a regular expression from a file: all keys are then matched in a child process that
    is killed after `_PATTERN_SECONDS`, so a catastrophically backtracking key costs seconds,
    not hours, and Ctrl-C still works.
    """
    keys = list(patterns)
    if all(_LITERAL.fullmatch(k) for k in keys):
        first = {m: next((i for i, k in enumerate(keys) if _matches(k, m)), -1) for m in modules}
    else:
        first = _match_in_child(keys, modules, where)
    return {m: default if i < 0 else float(patterns[keys[i]]) for m, i in first.items()}  # type: ignore[arg-type]


def _matches(key: str, module: str) -> bool:
    return re.fullmatch(rf"(.*\.)?(?:{key})", module) is not None


_CHILD = """
import json, re, sys
job = json.load(sys.stdin)
out = []
for m in job["modules"]:
    out.append(next((i for i, k in enumerate(job["keys"])
                     if re.fullmatch(r"(.*\\.)?(?:" + k + ")", m)), -1))
json.dump(out, sys.stdout)
"""


def _match_in_child(keys: list[str], modules: list[str], where: Path) -> dict[str, int]:
    job = json.dumps({"keys": keys, "modules": modules})
    try:
        done = subprocess.run(
            [sys.executable, "-I", "-S", "-c", _CHILD], input=job, capture_output=True,
            text=True, timeout=_PATTERN_SECONDS, check=True,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        raise CheckpointError(
            f"{where}: matching its alpha_pattern keys against {len(modules)} module names took "
            f"more than {_PATTERN_SECONDS} s (a regular expression that backtracks "
            "catastrophically, e.g. '(a+)+$'); write the keys as plain module names."
        ) from None
    except (subprocess.CalledProcessError, OSError) as e:
        raise CheckpointError(
            f"{where}: its alpha_pattern keys could not be matched against the module names "
            f"({type(e).__name__}); write the keys as plain module names."
        ) from None
    return dict(zip(modules, json.loads(done.stdout), strict=True))


class LoraSource(TensorSource):
    """A PEFT adapter directory; needs the base's source before any tensor can be read."""

    def __init__(self, directory: Path, trust_pickle: bool) -> None:
        self.directory = directory
        self.adapter_config = _read_adapter_config(directory / "adapter_config.json")
        st = directory / "adapter_model.safetensors"
        if st.is_file():
            self.files = [st]
            raw_src = SafetensorsSource([st], {})
            raw = {n: raw_src.read(n) for n in raw_src.names()}  # adapters are small
        else:
            self.files = [directory / "adapter_model.bin"]
            sd = load_pickle(self.files[0], trust_pickle)
            raw = {name: sd[key] for name, key in _canonical_map(list(sd), self.files[0]).items()}
        self._a: dict[str, torch.Tensor] = {}
        self._b: dict[str, torch.Tensor] = {}
        self._embedding: set[str] = set()
        self._full: dict[str, torch.Tensor] = {}  # modules_to_save: whole tensors
        for key, t in raw.items():
            if "lora_magnitude_vector" in key:
                raise CheckpointError(
                    f"{self.files[0]}: '{key}' is a DoRA magnitude; DoRA adapters are not supported."
                )
            m = _LORA_KEY.match(key)
            if m is None:
                # modules_to_save copies, and the base layer peft saves with an embedding target
                full = key.replace(".modules_to_save.default", "").replace(".base_layer.", ".")
                self._full[full] = t
                continue
            target = m.group("module") + ".weight"
            (self._a if m.group("ab") == "A" else self._b)[target] = t
            if m.group("emb"):
                self._embedding.add(target)
        if set(self._a) != set(self._b):
            odd = sorted(set(self._a) ^ set(self._b))
            raise CheckpointError(f"{self.files[0]}: LoRA A/B factors unpaired for {odd[:3]}.")
        for name, a in self._a.items():
            b = self._b[name]
            if a.dim() != 2 or b.dim() != 2 or a.shape[0] < 1 or b.shape[1] != a.shape[0]:
                raise CheckpointError(
                    f"{self.files[0]}: LoRA factors of '{name}' are A {list(a.shape)} and B "
                    f"{list(b.shape)}; expected A (r, in) and B (out, r) with the same r ≥ 1."
                )
        self.tied = []
        self.specs = {}
        self._base: TensorSource | None = None
        self._alphas: dict[str, float] | None = None  # module → lora_alpha, once matched

    @property
    def targets(self) -> list[str]:
        return sorted(self._a)

    def attach_base(self, base: TensorSource) -> None:
        """Give the adapter the base weights it applies to; checks every target exists."""
        for name in list(self._a) + list(self._full):
            if name not in base.specs:
                raise CheckpointError(
                    f"{self.directory}: the adapter changes '{name}', which the base model "
                    "does not have; is --base the model this adapter was trained on?"
                )
        for name in self._a:
            out_in = self._oriented_shape(name)
            spec = base.specs[name]
            stored = out_in[::-1] if self._stored_transposed(name) else out_in
            if tuple(stored) != spec.shape:
                raise CheckpointError(
                    f"{self.directory}: LoRA update of '{name}' has shape {list(stored)} but the "
                    f"base tensor is {list(spec.shape)}."
                )
        for name in list(self._full):
            if self._full[name].shape != base.specs[name].shape:
                raise CheckpointError(
                    f"{self.directory}: the adapter stores '{name}' with shape "
                    f"{list(self._full[name].shape)} but the base tensor is "
                    f"{list(base.specs[name].shape)}."
                )
            if torch.equal(self._full[name], base.read(name)):
                del self._full[name]  # a saved copy of the unchanged base layer: W = W_0 + B A
        self._base = base
        self.specs = dict(base.specs)
        self.tied = list(base.tied)

    def _scale(self, name: str) -> float:
        module = name[: -len(".weight")]
        r = self._a[name].shape[0]  # A is (r, in), also for embeddings
        cfg = self.adapter_config
        default = float(cfg.get("lora_alpha", _PEFT_DEFAULT))  # type: ignore[arg-type]
        patterns: Mapping[str, object] = cfg.get("alpha_pattern") or {}  # type: ignore[assignment]
        if self._alphas is None:
            modules = sorted(n[: -len(".weight")] for n in self._a)
            where = self.directory / "adapter_config.json"
            self._alphas = _pattern_values(patterns, modules, default, where) if patterns else {}
        alpha = self._alphas.get(module, default)
        return alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r

    def _stored_transposed(self, name: str) -> bool:
        return name in self._embedding or bool(self.adapter_config.get("fan_in_fan_out"))

    def _oriented_shape(self, name: str) -> tuple[int, int]:
        a, b = self._a[name], self._b[name]
        if name in self._embedding:  # A (r, vocab), B (hidden, r): stored Δ = (B A)ᵀ
            return (b.shape[0], a.shape[1])
        return (b.shape[0], a.shape[1])

    def factors(self, name: str) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Return (scale·B, A) with Δ = (scale·B) @ A in the stored orientation, or None.

        Shape: returns ((rows, r), (r, cols)) for a stored (rows, cols) tensor.
        """
        if name not in self._a:
            return None
        b = self._b[name].float() * self._scale(name)
        a = self._a[name].float()
        if self._stored_transposed(name):
            return a.t().contiguous(), b.t().contiguous()  # (Δ)ᵀ = Aᵀ Bᵀ
        return b, a

    def read(self, name: str) -> torch.Tensor:
        if self._base is None:
            raise CheckpointError(
                f"{self.directory}: a LoRA adapter needs its base model (--base)."
            )
        base = self._full[name].clone() if name in self._full else self._base.read(name)
        f = self.factors(name)
        if f is None:
            return base
        return (base.float() + f[0] @ f[1]).to(base.dtype)

    def full_replacements(self) -> list[str]:
        return sorted(self._full)

    def spec(self, name: str) -> Spec:
        return self.specs[name]
