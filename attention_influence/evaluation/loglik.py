"""Batched log-likelihood of continuations: the one primitive behind every mirror-effect benchmark.

A request is (context ids, continuation ids); its value is sum_j log p(cont_j | prefix, context, cont_<j).
Work is shared at two levels, which is what makes many-shot prompts affordable on a CPU:
- a prefix common to all requests (the few-shot demonstrations) runs once; its key/value cache is broadcast;
- requests with the same context (the C candidate labels of one query, the 4 HellaSwag endings) run that
  context once per batch, then their continuations extend its cache.
Rows are right-padded. Continuations sit after the padded contexts in the cache, so they get explicit position
ids and a 2-D attention mask with zeros over each row's context padding; head masking averages over the
visible keys of that mask, so masked heads see exactly what an unpadded forward would show them.
Logits are built only at continuation positions, in row chunks, in float32. The same pass says whether each
continuation is the greedy one (every token the argmax), which is exact match under greedy decoding.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch

from attention_influence.influence.masking import masked_heads
from attention_influence.influence.models import LoadedModel

Request = tuple[Sequence[int], Sequence[int]]  # (context ids, continuation ids)
LOGIT_ROWS = 2048  # continuation positions per lm_head chunk (2048 x 49k vocab x 4 B ~ 400 MB)
CACHE_FACTOR = 4  # cached positions per batch, in units of batch_tokens


@dataclass
class ContinuationScores:
    logprob: np.ndarray  # (N,) float64 sum of log p over the continuation's tokens
    n_tokens: np.ndarray  # (N,) continuation lengths
    n_argmax: np.ndarray  # (N,) continuation tokens that were the model's argmax

    @property
    def greedy(self) -> np.ndarray:
        """(N,) bool: greedy decoding from the context reproduces the continuation exactly."""
        return self.n_argmax == self.n_tokens


@dataclass
class _Group:
    ctx: list[int]
    members: list[int]  # request indices sharing this context
    width: int  # len(ctx) + longest continuation


def _pad_id(lm: LoadedModel) -> int:
    pad = lm.tokenizer.pad_token_id
    return int(pad) if pad is not None else int(lm.tokenizer.eos_token_id or 0)


def _groups(reqs: list[tuple[list[int], list[int]]]) -> list[_Group]:
    by_ctx: dict[tuple[int, ...], _Group] = {}
    for i, (ctx, cont) in enumerate(reqs):
        g = by_ctx.setdefault(tuple(ctx), _Group(list(ctx), [], 0))
        g.members.append(i)
        g.width = max(g.width, len(ctx) + len(cont))
    return sorted(by_ctx.values(), key=lambda g: -g.width)


def _batches(groups: list[_Group], prefix_len: int, batch_tokens: int) -> Iterable[list[_Group]]:
    """Longest first, at least one group per batch. New tokens (rows x widest row) stay within batch_tokens
    and cached ones (rows x (prefix + widest row)) within CACHE_FACTOR x batch_tokens: attending to a cached
    prefix costs memory traffic, not matmul work, so short rows after a long prefix batch many at a time."""
    batch: list[_Group] = []
    rows = 0
    for g in groups:
        width = batch[0].width if batch else g.width
        n = rows + len(g.members)
        if batch and (n * width > batch_tokens or n * (prefix_len + width) > CACHE_FACTOR * batch_tokens):
            yield batch
            batch, rows = [], 0
        batch.append(g)
        rows += len(g.members)
    if batch:
        yield batch


def _cache(
    lm: LoadedModel, kv: list[tuple[torch.Tensor, torch.Tensor]], index: torch.Tensor | None, rows: int
):
    """A DynamicCache whose rows are `index` rows of kv (or kv broadcast to `rows` rows)."""
    from transformers import DynamicCache

    if index is None:
        data = [(k.expand(rows, -1, -1, -1), v.expand(rows, -1, -1, -1)) for k, v in kv]
    else:
        data = [(k.index_select(0, index), v.index_select(0, index)) for k, v in kv]
    return DynamicCache(ddp_cache_data=data, config=lm.model.config)


def _kv(cache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(layer.keys, layer.values) for layer in cache.layers]


def _score_rows(
    lm_head, hidden: torch.Tensor, targets: torch.Tensor, rows: torch.Tensor, n_rows: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum log p and argmax hits per row from hidden states at predicting positions: (N, C) -> (R,), (R,)."""
    logp = torch.empty(len(targets), dtype=torch.float32, device=hidden.device)
    hit = torch.empty(len(targets), dtype=torch.float32, device=hidden.device)
    for s in range(0, len(targets), LOGIT_ROWS):
        logits = lm_head(hidden[s : s + LOGIT_ROWS]).float()  # (n, V)
        tgt = targets[s : s + LOGIT_ROWS]
        logp[s : s + LOGIT_ROWS] = logits.log_softmax(-1).gather(-1, tgt[:, None])[:, 0]
        hit[s : s + LOGIT_ROWS] = (logits.argmax(-1) == tgt).float()
    zeros = torch.zeros(n_rows, dtype=torch.float64, device=hidden.device)
    return zeros.index_add(0, rows, logp.double()), zeros.clone().index_add(0, rows, hit.double())


@torch.no_grad()
def _run_batch(lm: LoadedModel, batch: list[_Group], reqs, kv, P: int, pad: int):
    """Contexts of the batch's groups once, then every continuation on their cache: sums per request."""
    model, device = lm.model, lm.device
    base, lm_head = model.base_model, model.get_output_embeddings()
    G, Tc = len(batch), max(len(g.ctx) for g in batch)
    ctx_ids = torch.full((G, Tc), pad, dtype=torch.long)
    ctx_mask = torch.zeros((G, P + Tc), dtype=torch.long)
    ctx_mask[:, :P] = 1
    for r, g in enumerate(batch):
        ctx_ids[r, : len(g.ctx)] = torch.tensor(g.ctx)
        ctx_mask[r, P : P + len(g.ctx)] = 1
    out = base(
        input_ids=ctx_ids.to(device),
        attention_mask=ctx_mask.to(device),
        past_key_values=_cache(lm, kv, None, G) if kv else None,
        use_cache=True,
    )
    last = torch.tensor([len(g.ctx) - 1 for g in batch], device=device)
    ctx_last = out.last_hidden_state[
        torch.arange(G, device=device), last
    ]  # (G, C) predicts each cont's 1st token
    ctx_kv = _kv(out.past_key_values)  # (G, Hkv, P + Tc, D) per layer

    members = [(r, i) for r, g in enumerate(batch) for i in g.members]  # (group row, request index)
    R, Tn = len(members), max(len(reqs[i][1]) for _, i in members)
    ids = torch.full((R, Tn), pad, dtype=torch.long)
    mask = torch.zeros((R, P + Tc + Tn), dtype=torch.long)
    pos = torch.zeros((R, Tn), dtype=torch.long)
    hid_rows, hid_cols, first, targets, rows = [], [], [], [], []
    for j, (r, i) in enumerate(members):
        cont, n_ctx = reqs[i][1], len(batch[r].ctx)
        ids[j, : len(cont)] = torch.tensor(cont)
        mask[j, : P + Tc] = ctx_mask[r]
        mask[j, P + Tc : P + Tc + len(cont)] = 1
        pos[j] = P + n_ctx + torch.arange(Tn)
        first.append(r)  # token 0 comes from the context's last hidden state
        hid_rows.extend([j] * (len(cont) - 1))  # token t >= 1 from continuation position t - 1
        hid_cols.extend(range(len(cont) - 1))
        targets.extend(cont)
        rows.extend([j] * len(cont))
    cont_hidden = base(
        input_ids=ids.to(device),
        attention_mask=mask.to(device),
        position_ids=pos.to(device),
        past_key_values=_cache(lm, ctx_kv, torch.tensor([r for r, _ in members], device=device), R),
        use_cache=True,
    ).last_hidden_state  # (R, Tn, C)
    # predicting states in target order: per member, [context last, cont 0 .. cont n-2]
    parts, k = [], 0
    hid_rows_t, hid_cols_t = (
        torch.tensor(hid_rows, dtype=torch.long),
        torch.tensor(hid_cols, dtype=torch.long),
    )
    for r, i in members:
        n = len(reqs[i][1])
        parts.append(ctx_last[r : r + 1])
        if n > 1:
            parts.append(
                cont_hidden[hid_rows_t[k : k + n - 1].to(device), hid_cols_t[k : k + n - 1].to(device)]
            )
        k += n - 1
    hidden = torch.cat(parts)  # (N, C)
    logp, hits = _score_rows(
        lm_head, hidden, torch.tensor(targets, device=device), torch.tensor(rows, device=device), R
    )
    return [i for _, i in members], logp.cpu().numpy(), hits.cpu().numpy()


@torch.no_grad()
def continuation_scores(
    lm: LoadedModel,
    requests: Sequence[Request],
    prefix: Sequence[int] = (),
    heads: Iterable = (),
    batch_tokens: int = 8192,
    progress: Callable[[int, int], None] | None = None,
) -> ContinuationScores:
    """Log-likelihood and greedy agreement of each continuation; `heads` are masked for the whole computation.

    Every continuation must be non-empty, and there must be something to condition on (a prefix or a context).
    Runs inside an outer `masked_heads` block too: with `heads=()` the current masking is left as it is.
    """
    prefix = list(prefix)
    reqs = [(list(c), list(t)) for c, t in requests]
    for i, (ctx, cont) in enumerate(reqs):
        if not cont:
            raise ValueError(f"request {i}: empty continuation")
        if not ctx and not prefix:
            raise ValueError(f"request {i}: empty context and no prefix; nothing predicts the first token")
    if prefix:  # the prefix's last token moves into every context, so each context predicts a first token
        reqs = [(prefix[-1:] + ctx, cont) for ctx, cont in reqs]
        prefix = prefix[:-1]
    n = len(reqs)
    logprob, n_argmax = np.zeros(n), np.zeros(n, dtype=np.int64)
    n_tokens = np.array([len(t) for _, t in reqs], dtype=np.int64)
    if not reqs:
        return ContinuationScores(logprob, n_tokens, n_argmax)
    heads = list(heads)
    scope = masked_heads(lm.model, heads) if heads else nullcontext()
    pad, done = _pad_id(lm), 0
    with scope:
        kv = None
        if prefix:
            ids = torch.tensor([prefix], dtype=torch.long, device=lm.device)
            kv = _kv(lm.model.base_model(input_ids=ids, use_cache=True).past_key_values)  # (1, Hkv, P, D)
        for batch in _batches(_groups(reqs), len(prefix), max(batch_tokens, 1)):
            idx, lp, hits = _run_batch(lm, batch, reqs, kv, len(prefix), pad)
            logprob[idx], n_argmax[idx] = lp, np.rint(hits).astype(np.int64)
            done += len(idx)
            if progress:
                progress(done, n)
    return ContinuationScores(logprob, n_tokens, n_argmax)


def continuation_logprobs(
    lm: LoadedModel,
    requests: Sequence[Request],
    prefix: Sequence[int] = (),
    heads: Iterable = (),
    batch_tokens: int = 8192,
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """Sum log-probability of each continuation, float64 (N,) (see continuation_scores)."""
    return continuation_scores(lm, requests, prefix, heads, batch_tokens, progress).logprob
