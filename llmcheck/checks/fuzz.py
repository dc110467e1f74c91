"""fuzz: Hypothesis explores batch size, sequence length, token ids and attention masks.

Every example must run without an exception, give an output of the expected shape (the default
batch's output shape with the batch and sequence dimensions replaced) and be finite at the real
(unmasked) tokens. Sequence lengths run from 1 to ``max_seq_len``, token ids include 0 and
``vocab_size - 1`` (all-lowest, all-highest and alternating examples besides random ones), and
for models taking ``attention_mask`` samples are padded on the left or right. A failure is shrunk
by Hypothesis (``hypothesis.find``) to a minimal input, shown in the message with the exception
and the module it came from (``seq_len=33 raises IndexError in pos (Embedding)``). When the free
search finds nothing, a second search pins the sequence length at the declared limit, where
off-by-one position tables fail. Catches off-by-one vocabulary or position tables, shape bugs
at length 1 and NaNs on edge inputs. The seed is in the message for replay.
"""

from __future__ import annotations

import time

from llmcheck.measuring import budget
from llmcheck.registry import Check, Param
from llmcheck.results import Skip, Verdict

TOKEN_KINDS = ("lowest", "highest", "alternating", "random")
MIN_EXAMPLES = 10  # fewer cannot cover the edge kinds (lowest, highest, alternating) at a few lengths


def _cases(max_batch: int, seq_lens, masks: bool):
    from hypothesis import strategies as st

    @st.composite
    def case(draw):
        found = {"batch_size": draw(st.integers(1, max_batch)), "seq_len": draw(seq_lens)}
        found["tokens"] = draw(st.sampled_from(TOKEN_KINDS))
        if found["tokens"] == "random":
            found["token_seed"] = draw(st.integers(0, 2**16 - 1))
        if masks and found["seq_len"] > 1:
            found["padding"] = draw(st.sampled_from(("none", "right", "left")))
            if found["padding"] != "none":
                found["pad"] = draw(st.integers(1, found["seq_len"] - 1))
        return found

    return case()


def describe(case: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in case.items())


def _token_ids(case: dict, vocab: int):
    import torch

    shape = (case["batch_size"], case["seq_len"])
    kind = case["tokens"]
    if kind == "random":
        return torch.randint(0, vocab, shape, generator=torch.Generator().manual_seed(case["token_seed"]))
    if kind == "alternating":
        return (torch.arange(shape[0] * shape[1]).reshape(shape) % 2) * (vocab - 1)
    return torch.full(shape, 0 if kind == "lowest" else vocab - 1, dtype=torch.long)


def _mask(case: dict, ids):
    """Ones, with ``pad`` masked tokens on one side of every sample but the first (or the only one)."""
    import torch

    mask = torch.ones_like(ids)
    pad = case.get("pad", 0)
    rows = slice(1, None) if ids.shape[0] > 1 else slice(0, 1)
    if pad and case["padding"] == "left":
        mask[rows, :pad] = 0
    elif pad:
        mask[rows, -pad:] = 0
    return mask


def _where(exc: BaseException) -> str:
    """``file:line`` of the innermost frame in the model's code (else in a library, not torch)."""
    import traceback
    from pathlib import Path

    import torch

    frames = traceback.extract_tb(exc.__traceback__)
    ours, lib = str(Path(__file__).resolve().parents[1]), str(Path(torch.__file__).resolve().parent)
    user = [f for f in frames if not f.filename.startswith(ours) and "site-packages" not in f.filename]
    other = [f for f in frames if not f.filename.startswith((ours, lib))]
    frame = (user or other or [None])[-1]
    return f" at {Path(frame.filename).name}:{frame.lineno}" if frame else ""


class Probe:
    """Runs one example; returns what went wrong, or None. Tracks the module stack so an
    exception names the innermost module it came from."""

    def __init__(self, t, model, masks: bool, lengths: tuple[int, int]):
        self.t, self.model, self.masks = t, model, masks
        self.stack: list[str] = []
        self.expected = self._expected_shape(lengths)

    def _expected_shape(self, lengths: tuple[int, int]):
        """(dims kept from the default batch's output, its batch size, its seq_len) for shape checks;
        the default length is brought within the ``lengths`` the inputs hook makes."""
        import torch

        seq_len = min(max(self.t.shape()[1], lengths[0]), lengths[1])
        batch = self.t.batch(seq_len=seq_len)
        ids = self.t.tokens(batch)
        if ids is None or ids.dim() != 2:
            raise Skip(self.t.no_tokens(batch, "fuzz"))
        with torch.no_grad():
            out = self.t.logits(self.t.forward(self.model, batch))
        if out.dim() >= 2 and tuple(out.shape[:2]) == tuple(ids.shape):
            return 2, list(out.shape[2:])
        return (1, list(out.shape[1:])) if out.dim() >= 1 and out.shape[0] == ids.shape[0] else (0, list(out.shape))

    def __enter__(self):
        self.handles = []
        for name, module in self.model.named_modules():
            label = f"{name or '<root>'} ({type(module).__name__})"
            self.handles.append(module.register_forward_pre_hook(lambda *a, label=label: self._enter(label)))
            self.handles.append(module.register_forward_hook(lambda *a: self._leave()))
        return self

    def _enter(self, label: str) -> None:  # hooks must return None, or they replace inputs/outputs
        self.stack.append(label)

    def _leave(self) -> None:
        if self.stack:
            self.stack.pop()

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()

    def __call__(self, case: dict) -> str | None:
        import torch

        from llmcheck.target.model import UserCodeError

        t = self.t
        ids = _token_ids(case, t.traits.vocab_size).to(t.device)
        batch, extra = t.with_tokens(t.batch(case["batch_size"], case["seq_len"]), ids), {}
        mask = _mask(case, ids) if self.masks else None
        if mask is not None:
            batch, extra = t.with_mask(batch, ids, mask)
        self.stack.clear()
        try:
            with torch.no_grad():
                out = t.logits(t.forward(self.model, batch, **extra))
        except UserCodeError as exc:
            cause = exc.__cause__ or exc
            where = f" in {self.stack[-1]}" if self.stack else ""
            text = str(cause).strip().splitlines()[0][:200] if str(cause).strip() else ""
            return f"raises {type(cause).__name__}{where}{_where(cause)}: {text}"
        return self._judge_output(out, ids, mask)

    def _judge_output(self, out, ids, mask) -> str | None:
        import torch

        kept, tail = self.expected
        expected = [*ids.shape[:kept], *tail]
        if list(out.shape) != expected:
            return f"returns shape {list(out.shape)}, expected {expected}"
        real = out[mask.bool()] if mask is not None and kept == 2 else out
        bad = int((~torch.isfinite(real.float())).sum())
        return f"returns {bad} non-finite value(s) at real tokens" if bad else None


def _search(probe, strategy, examples: int, seed: int, budget_s: float) -> dict:
    """``hypothesis.find`` of the minimal failing case, within a time budget (renewed for shrinking).
    A user hook that breaks its promise while the inputs are made stops the search and is raised:
    the item is an error naming the hook, never a failure of the model."""
    import random

    from hypothesis import HealthCheck, Phase, Verbosity, find, settings
    from hypothesis.errors import NoSuchExample

    from llmcheck.target.model import ContractError, UserCodeError

    results: dict[tuple, str | None] = {}
    deadline = [time.monotonic() + budget_s]
    hook_error: list[Exception] = []

    def failing(case: dict) -> bool:
        key = tuple(sorted(case.items()))
        if key not in results:
            if hook_error or time.monotonic() > deadline[0]:
                return False  # out of time (or the hook broke): nothing new is run, known results stay
            try:
                results[key] = probe(case)
            except (ContractError, UserCodeError) as exc:  # the probe catches the forward's own errors
                hook_error.append(exc)
                return False
            if results[key] is not None and not any(v for k, v in results.items() if k != key):
                deadline[0] = time.monotonic() + budget_s  # a fresh budget for shrinking
        return results[key] is not None

    config = settings(
        max_examples=examples,
        database=None,
        deadline=None,
        phases=(Phase.generate, Phase.shrink),
        suppress_health_check=list(HealthCheck),
        verbosity=Verbosity.quiet,
    )
    try:
        found = find(strategy, failing, settings=config, random=random.Random(seed))
    except NoSuchExample:
        found = None
    if hook_error:
        raise hook_error[0]
    out = {
        "examples": len(results),
        "failing": sum(v is not None for v in results.values()),
        "tried": [dict(k) for k in results],
    }
    if found is not None:
        out.update(case=found, problem=results[tuple(sorted(found.items()))])
    return out


def _coverage(tried: list[dict]) -> dict:
    def span(key):
        values = [c[key] for c in tried if key in c]
        return [min(values), max(values)] if values else None

    return {
        "batch_size": span("batch_size"),
        "seq_len": span("seq_len"),
        "tokens": sorted({c["tokens"] for c in tried}),
        "padding": sorted({c.get("padding", "none") for c in tried}),
    }


def search_seconds(p) -> tuple[float, float]:
    """The clocks of the free search and of the one pinned at the longest length: within the
    budget too (80% and 20% of it), each also capped by ``max_seconds`` (the pinned one by half).
    Only a failure found renews a clock, to shrink it."""
    seconds = budget.allowed(p)[0]
    return min(p.max_seconds, 0.8 * seconds), min(max(1.0, p.max_seconds / 2), 0.2 * seconds)


def _plan(ctx, p, lengths: tuple[int, int]) -> budget.Plan:
    """Examples that fit ``budget_s``: a forward at the mean example size (batch 1..max_batch_size,
    length over ``lengths``), a quarter more for the search pinned at the longest length."""
    costs = budget.step_costs(ctx.target, train=False)
    tokens = (1 + p.max_batch_size) / 2 * (lengths[0] + lengths[1]) / 2
    unit = budget.forward_at(costs, tokens)
    return budget.plan(
        ctx,
        "examples",
        None if unit is None else 1.25 * unit,
        MIN_EXAMPLES,
        p.examples,
        budget.allowed(p),
        check="fuzz",
    )


def measure(ctx, p) -> dict:
    from hypothesis import strategies as st

    from llmcheck.target.lengths import input_lengths

    t = ctx.target
    vocab = t.traits.vocab_size
    max_len = p.max_seq_len or t.traits.max_seq_len or 64
    seed = t.seed if p.seed < 0 else p.seed
    print(f"llmcheck fuzz: seed={seed} (replay: --llmcheck-set fuzz.seed={seed})")
    model = t.build().eval()
    masks = t.takes("attention_mask")
    shortest, longest = input_lengths(t, max_len)
    planned = _plan(ctx, p, (shortest, longest))
    if not planned.fits:
        raise Skip(planned.inconclusive())
    examples = planned.amount
    free_s, pinned_s = search_seconds(p)
    out = {
        "seed": seed,
        "vocab_size": vocab,
        "max_seq_len": max_len,
        "lengths": [shortest, longest],
        "inputs_hook": t.hooks["inputs"].fn.__name__ if "inputs" in t.hooks else None,
        "max_batch_size": p.max_batch_size,
        "masks": masks,
        "plan": planned.to_json(),
        "search_seconds": [round(free_s, 3), round(pinned_s, 3)],
    }
    with Probe(t, model, masks, (shortest, longest)) as probe:
        kept, tail = probe.expected
        out["output_shape"] = "[" + ", ".join([*"BT"[:kept], *map(str, tail)]) + "]"
        ctx.progress(search="free", examples=examples)
        free = _search(probe, _cases(p.max_batch_size, st.integers(shortest, longest), masks), examples, seed, free_s)
        searches = [("free", free)]
        if "case" not in free and longest > shortest:
            ctx.progress(search="at max_seq_len")
            pinned = _search(
                probe,
                _cases(p.max_batch_size, st.just(longest), masks),
                max(4, examples // 5),
                seed + 1,
                pinned_s,
            )
            searches.append(("at max_seq_len", pinned))
    tried = [c for _, s in searches for c in s.pop("tried")]
    out.update(searches=dict(searches), coverage=_coverage(tried), examples=len(tried))
    return out


def judge(m: dict, p) -> Verdict:
    replay = f"seed={m['seed']} (replay: --llmcheck-set fuzz.seed={m['seed']})"
    for stage, s in m["searches"].items():
        if "case" in s:
            return Verdict(
                "failed",
                f"{describe(s['case'])} {s['problem']} (minimal input after shrinking; "
                f"{s['failing']} failing of {s['examples']} examples in the {stage} search; {replay})",
            )
    c = m["coverage"]
    padding = f", padding {'/'.join(c['padding'])}" if m["masks"] else ""
    shortest, longest = m.get("lengths", [1, m["max_seq_len"]])
    made = (
        f" (@llmcheck.inputs {m['inputs_hook']} makes lengths {shortest}..{longest} only)"
        if (shortest, longest) != (1, m["max_seq_len"])
        else ""
    )
    return Verdict(
        "passed",
        f"{m['examples']} examples passed (batch_size {c['batch_size'][0]}..{c['batch_size'][1]}, "
        f"seq_len {c['seq_len'][0]}..{c['seq_len'][1]} of max {m['max_seq_len']}{made}, "
        f"tokens {'/'.join(c['tokens'])} of vocab {m['vocab_size']}{padding}): no exception, "
        f"output shape {m['output_shape']}, finite; {replay}"
        + (f"; {m['plan']['sentence']}" if m.get("plan", {}).get("cut") else ""),
    )


CHECK = Check(
    name="fuzz",
    family="fuzz",
    summary=(
        "Hypothesis over batch size, length, token ids and masks: no exception, right shape, finite; failures shrunk"
    ),
    measure=measure,
    judge=judge,
    params={
        "examples": Param(
            int,
            40,
            "examples Hypothesis generates (a fifth more with seq_len at its limit; fewer when budget_s affords fewer)",
            minimum=1,
        ),
        "max_seconds": Param(
            float, 5.0, "time budget of the search (renewed once for shrinking a failure)", minimum=0.1
        ),
        "max_batch_size": Param(int, 4, "largest batch size tried", minimum=1),
        "max_seq_len": Param(int, 0, "longest sequence tried (0: the model's max_seq_len, else 64)", minimum=0),
        "seed": Param(int, -1, "Hypothesis seed (-1: the run's seed); printed in the message for replay", minimum=-1),
        "budget_s": budget.param(20.0, "examples (max_seconds still stops a search that runs longer)"),
    },
    needs=frozenset({"vocab_size"}),
)
