"""The demo's toy reasoning task: n-digit addition with character tokens and a checkable answer."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch

from opdlens.errors import OpdlensError

PLUS, EQUALS = 10, 11
VOCAB_SIZE = 12  # the digits 0-9, '+', '='


@dataclass(frozen=True)
class AdditionTask:
    """`a+b=` → the digits of a+b, least significant first when reverse (which makes it learnable).

    The validation and test sets are fixed by `split_seed`; training pairs are drawn
    from the remaining pairs.
    """

    n_digits: int = 3
    reverse: bool = True
    n_val: int = 256
    n_test: int = 512
    split_seed: int = 0

    @property
    def prompt_len(self) -> int:
        """Tokens in `a+b=`."""
        return 2 * self.n_digits + 2

    @property
    def answer_len(self) -> int:
        """Answer digits (the sum is zero-padded to n_digits + 1)."""
        return self.n_digits + 1

    def to_dict(self) -> dict[str, Any]:
        """The fields config.json records to rebuild the held-out set."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AdditionTask:
        """Inverse of to_dict."""
        try:
            return cls(**{k: data[k] for k in cls.__dataclass_fields__})
        except KeyError as err:
            raise OpdlensError(f"The demo task record {data} lacks the field {err}.") from err

    def _digits(self, x: torch.Tensor, width: int) -> torch.Tensor:
        powers = 10 ** torch.arange(width - 1, -1, -1)
        return (x[:, None] // powers) % 10  # (N, width), most significant first

    def encode(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompt and answer tokens. Shape: a, b (N,) → (N, prompt_len), (N, answer_len)."""
        n = a.shape[0]
        prompt = torch.cat(
            [
                self._digits(a, self.n_digits),
                torch.full((n, 1), PLUS),
                self._digits(b, self.n_digits),
                torch.full((n, 1), EQUALS),
            ],
            dim=1,
        )
        answer = self._digits(a + b, self.answer_len)
        return prompt, answer.flip(1) if self.reverse else answer

    def _pair_ids(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a * 10**self.n_digits + b

    def _fixed_pairs(self) -> tuple[torch.Tensor, torch.Tensor]:
        space = 10 ** (2 * self.n_digits)
        if self.n_val + self.n_test > space // 2:
            raise OpdlensError(
                f"n_val + n_test = {self.n_val + self.n_test} leaves too few training pairs "
                f"out of {space}; lower them or raise n_digits."
            )
        gen = torch.Generator().manual_seed(self.split_seed)
        ids = torch.randperm(space, generator=gen)[: self.n_val + self.n_test]
        return ids[: self.n_val], ids[self.n_val :]

    def split(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The fixed `val` or `test` set as (prompts, answers)."""
        val, test = self._fixed_pairs()
        ids = {"val": val, "test": test}.get(name)
        if ids is None:
            raise ValueError(f"split must be 'val' or 'test'; got {name!r}.")
        base = 10**self.n_digits
        return self.encode(ids // base, ids % base)

    def sampler(self, seed: int) -> TrainSampler:
        """A seeded stream of training pairs disjoint from the validation and test sets."""
        val, test = self._fixed_pairs()
        return TrainSampler(self, torch.cat([val, test]), seed)


class TrainSampler:
    """Draws training batches (prompts, answers), never a validation or test pair."""

    def __init__(self, task: AdditionTask, held_out: torch.Tensor, seed: int) -> None:
        self.task = task
        self.held_out = held_out
        self.gen = torch.Generator().manual_seed(seed)

    def batch(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """n fresh training problems. Shape: → (n, prompt_len), (n, answer_len)."""
        hi = 10**self.task.n_digits
        a, b = torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.long)
        while a.shape[0] < n:
            a_new = torch.randint(0, hi, (n,), generator=self.gen)
            b_new = torch.randint(0, hi, (n,), generator=self.gen)
            keep = ~torch.isin(self.task._pair_ids(a_new, b_new), self.held_out)
            a, b = torch.cat([a, a_new[keep]]), torch.cat([b, b_new[keep]])
        return self.task.encode(a[:n], b[:n])
