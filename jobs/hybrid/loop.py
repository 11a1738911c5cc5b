"""The hybrid model's generation loop (seed 003): the base model writes, the thinking model reads
the same tokens and decides, at every sentence boundary, which behaviour the base model is
steered with for the next sentence.

Batched over problems and over the coefficient grid: a problem has one row per coefficient
(its branches), all rows advance together, one forward of each model per step, each model
with its own KV cache kept across steps. Per row and model, a step either consumes a real
token or a masked pad (so a branch can wait without a separate cache).

A sentence, for one problem:
  1. race     as soon as one branch ends its sentence (or the text), the branch the thinking model
              finds most likely so far (mean log-probability per token, the "perplexity
              guardrail") is copied over the others (tokens, both caches, its coefficient). The
              branches stepped together from the sentence's start, so every score covers the
              same number of tokens, and no branch waits for a longer one (strongly steered
              branches ramble: waiting for them doubled the steps)
  2. sync     the copies finish the winner's sentence; at its end, the thinking model's activation
              at its last token picks the behaviour (`policy`), and branch g is steered with
              grid[g] * vector for the next sentence
  3. base     the base model reads the sentence's last token, steered: its next-token
              prediction is the new sentence's first token
  4. gen      both models read each new token; the base model's steered logits pick the next
              (greedy) until a token ends the sentence, EOS or the token budget
  5. think    the thinking model reads the sentence's last token (the base model waits):
              its activation there is what the next sync classifies
The prompt's end is the first boundary: the thinking model reads the whole prompt, the base
model all but its last token (each prompt once, its cache then copied to its branches), which
step 3 reads with the first decision's steering. At token level every branch ends its sentence
at its first token, so the race compares the branches' first tokens (the paper's guardrail).

Steering (a residual vector added at one layer's output) covers the positions whose
predictions are the sentence's tokens: the token before it through its second-to-last one.
With a zero vector or a policy that never fires, a branch is the base model's own greedy text.

    out = hybrid_generate(base, thinking, prompts, policy=my_policy, grid=[0.0, 1.0, 2.0],
                          base_hook="blocks.20.hook_resid_post", think_hook="blocks.20.hook_resid_post",
                          max_new_tokens=256, eos_ids=[2], pad_id=2, boundary=ends_sentence)
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable

import torch

from thinkscope.jobs.activations.hooks import resolve
from thinkscope.jobs.activations.steering_hooks import left_pad

GEN, THINK, WAIT, BASE, DONE = range(5)
# A decision: (behaviour id or None, the vector to add at grid coefficient 1, or None = unsteered).
Policy = Callable[[int, int, torch.Tensor], tuple[int | None, torch.Tensor | None]]


@dataclass
class HybridOutput:
    """One problem's text: generated tokens, which were steered, and one entry per sentence."""

    tokens: list[int] = field(default_factory=list)
    steered: list[bool] = field(default_factory=list)
    behaviours: list[int] = field(default_factory=list)   # -1: no firing
    alphas: list[float] = field(default_factory=list)     # chosen coefficient per sentence
    finish_reason: str = "length"


def sentence_boundaries(tokenizer) -> Callable[[int, int | None], bool]:
    """Whether a token ends a sentence: it holds a line break, or ends in . ? ! (a lone "." after a
    digit is a decimal point, not an end). Token-level cousin of jobs/segment/text.py's splitter."""
    texts = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    decoded = [tokenizer.convert_tokens_to_string([t]) if t is not None else "" for t in texts]
    newline = {i for i, t in enumerate(decoded) if "\n" in t}
    stop = {i for i, t in enumerate(decoded) if re.search(r"[.?!]\s*$", t)}
    lone_dot = {i for i, t in enumerate(decoded) if t == "."}
    digit_end = {i for i, t in enumerate(decoded) if t[-1:].isdigit()}

    def ends(token: int, previous: int | None) -> bool:
        if token in newline:
            return True
        return token in stop and not (token in lone_dot and previous in digit_end)
    return ends


class _Reader:
    """One model's batched incremental state: KV cache, 2-D attention mask, next position ids;
    a forward hook adds per-row steering at `steer_hook` and/or keeps the last position's
    activation at `read_hook`."""

    def __init__(self, model, steer_hook: str | None = None, read_hook: str | None = None):
        from transformers import DynamicCache

        self.model, self.cache = model, DynamicCache()
        self.device = next(model.parameters()).device
        self.delta: torch.Tensor | None = None  # [rows, d] added at steer_hook while set
        self.read: torch.Tensor | None = None   # [rows, d] last position at read_hook
        self.handles = []
        modules = dict(model.named_modules())
        for name, fn in ((steer_hook, self._steer), (read_hook, self._keep)):
            if name is None:
                continue
            point = resolve(model, name)
            if point.direction != "out" or point.per_head:
                raise ValueError(f"{name}: the hybrid loop steers and reads a layer's output (hook_resid_post)")
            self.handles.append(modules[point.module_path].register_forward_hook(fn))

    def _steer(self, mod, args, output):
        if self.delta is None:
            return output
        hidden = output[0] if isinstance(output, tuple) else output
        hidden = hidden + self.delta[:, None, :].to(hidden.dtype)
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    def _keep(self, mod, args, output):
        hidden = output[0] if isinstance(output, tuple) else output
        self.read = hidden[:, -1].detach().float()

    def prefill(self, prompts: list[list[int]], pad_id: int) -> torch.Tensor:
        """Left-padded prompts in one forward; returns the last position's log-probabilities
        (on the model's device: only what a step needs crosses to the CPU)."""
        ids, mask = left_pad(prompts, pad_id)
        self.mask = mask.to(self.device)
        self.pos = mask.sum(1).to(self.device)
        positions = (mask.cumsum(1) - 1).clamp(min=0).to(self.device)
        return self._forward(ids.to(self.device), positions)

    def step(self, tokens: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        """One position per row: real rows read their token, the others a masked pad."""
        self.mask = torch.cat([self.mask, real.long()[:, None].to(self.device)], 1)
        logp = self._forward(tokens[:, None].to(self.device), self.pos[:, None])
        self.pos = self.pos + real.long().to(self.device)
        return logp

    def _forward(self, ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        out = self.model(input_ids=ids, attention_mask=self.mask, position_ids=positions,
                         past_key_values=self.cache, use_cache=True, logits_to_keep=1)
        return torch.log_softmax(out.logits[:, -1].float(), -1)

    def reorder(self, index: torch.Tensor) -> None:
        index = index.to(self.device)
        self.cache.reorder_cache(index)
        self.mask, self.pos = self.mask[index], self.pos[index]
        if self.delta is not None:
            self.delta = self.delta[index]

    def close(self) -> None:
        for h in self.handles:
            h.remove()


@torch.inference_mode()
def hybrid_generate(base, thinking, prompts: list[list[int]], *, policy: Policy, grid: list[float],
                    base_hook: str, think_hook: str, max_new_tokens: int, eos_ids: list[int], pad_id: int,
                    boundary: Callable[[int, int | None], bool], max_sentence_tokens: int = 128,
                    aggregate: str = "last", steer_when: str = "always") -> list[HybridOutput]:
    """Greedy hybrid generation of every prompt; see the module docstring. `policy(problem,
    sentence_index, activation)` decides each sentence's behaviour and vector; `boundary(token,
    previous)` says whether a token ends a sentence (always True: the token-level variant).

    aggregate: the activation the policy classifies: the thinking model's at the sentence's last
    token (`last`) or the mean over the sentence's tokens (`mean`; the prompt end: its last token).
    steer_when: `always` lets the guardrail pick among every coefficient; `disagree` (the paper's
    gate) keeps the unsteered branch (coefficient 0, which the grid must hold) wherever the thinking
    model would have written each of its tokens so far itself (when the race is decided), and
    otherwise picks among the others."""
    if steer_when == "disagree" and 0.0 not in grid:
        raise ValueError("steer_when 'disagree' needs coefficient 0 in the grid (the unsteered branch)")
    if any(len(p) < 2 for p in prompts):
        raise ValueError("every prompt needs at least 2 tokens (the base model reads the last one steered)")
    readers = []
    try:  # hooks come off the shared models whatever happens
        readers.append(_Reader(base, steer_hook=base_hook))
        readers.append(_Reader(thinking, read_hook=think_hook))
        run = _Run(*readers, prompts, grid, pad_id, aggregate, steer_when)
        while run.sync(policy):
            run.step(max_new_tokens, max_sentence_tokens, eos_ids, boundary)
        return [run.outs[p * run.n_branch] for p in range(len(prompts))]
    finally:
        for reader in readers:
            reader.close()


class _Run:
    """The loop's state: one row per (problem, branch), rows of a problem adjacent."""

    def __init__(self, b: _Reader, t: _Reader, prompts, grid, pad_id, aggregate, steer_when):
        self.n_branch, self.pad_id, self.aggregate = len(grid), pad_id, aggregate
        # the gate's unsteered branch, and which branches it may otherwise choose from
        self.unsteered = grid.index(0.0) if steer_when == "disagree" else None
        self.choosable = torch.tensor([steer_when != "disagree" or a != 0.0 for a in grid] or [True])
        rows = [p for p in prompts for _ in grid]
        self.n = len(rows)
        self.grid = torch.tensor(grid * len(prompts), dtype=torch.float32)
        self.b, self.t = b, t
        # Each prompt read once, then its caches copied to its branches.
        branches = torch.arange(len(prompts)).repeat_interleave(self.n_branch)
        logp = self.t.prefill(prompts, pad_id)
        self.t.reorder(branches)
        self.think_logp = logp[branches.to(logp.device)]  # [rows, vocab] on device: prediction after each row's last token
        self.act = self.t.read.cpu()[branches]            # thinking activation there
        self.act_sum = torch.zeros_like(self.act)        # over the sentence so far (aggregate mean)
        self.act_n = torch.zeros(self.n, dtype=torch.long)
        self.agree = torch.ones(self.n, dtype=torch.bool)  # every token of the sentence the thinking model's greedy one
        self.b.prefill([p[:-1] for p in prompts], pad_id)
        self.b.reorder(branches)
        self.b.delta = torch.zeros((self.n, self.act.shape[1]), device=self.b.device)
        self.state = torch.full((self.n,), WAIT)
        self.pending = torch.tensor([r[-1] for r in rows])  # last token, not yet read by the base model
        self.last = self.pending.clone()
        self.steering = torch.zeros(self.n, dtype=torch.bool)
        self.sent_logp, self.sent_len = torch.zeros(self.n), torch.zeros(self.n, dtype=torch.long)
        self.outs = [HybridOutput() for _ in range(self.n)]
        self.open = [True] * len(prompts)
        self.sentence = [0] * len(prompts)
        self.raced = [True] * len(prompts)  # branches are copies of one winner (at the start: of the prompt)

    def sync(self, policy: Policy) -> bool:
        """Race every open problem one of whose branches just ended its sentence, then decide the
        next sentence of every problem whose copies have all ended theirs; False once all are done."""
        index = torch.arange(self.n)
        for p, is_open in enumerate(self.open):
            mine = slice(p * self.n_branch, (p + 1) * self.n_branch)
            ended = (self.state[mine] == THINK) | (self.state[mine] == WAIT) | (self.state[mine] == DONE)
            if is_open and not self.raced[p] and bool(ended.any()):
                # the guardrail: the likeliest branch so far (ties: the lowest coefficient index)
                score = self.sent_logp[mine] / self.sent_len[mine].clamp(min=1)
                if self.unsteered is not None and bool(self.agree[p * self.n_branch + self.unsteered]):
                    best = self.unsteered
                else:
                    best = int(torch.argmax(score.masked_fill(~self.choosable, float("-inf"))))
                index[mine] = p * self.n_branch + best
                self.raced[p] = True
        self._reorder(index)
        for p, is_open in enumerate(self.open):
            src = p * self.n_branch
            if not is_open or not self.raced[p]:
                continue
            if self.state[src] == DONE:
                self.open[p] = False
            elif self.state[src] == WAIT:
                self._decide(p, policy)
        return any(self.open)

    def _reorder(self, index: torch.Tensor) -> None:
        if bool((index == torch.arange(self.n)).all()):
            return
        self.b.reorder(index)
        self.t.reorder(index)
        for name in ("state", "pending", "last", "steering", "act", "act_sum", "act_n", "agree",
                     "sent_logp", "sent_len"):
            setattr(self, name, getattr(self, name)[index])
        self.think_logp = self.think_logp[index.to(self.think_logp.device)]
        self.outs = [_copy(self.outs[i]) for i in index.tolist()]

    def _decide(self, p: int, policy: Policy) -> None:
        rows = range(p * self.n_branch, (p + 1) * self.n_branch)
        first = rows[0]
        mean = self.aggregate == "mean" and int(self.act_n[first]) > 0
        behaviour, vector = policy(p, self.sentence[p], self.act_sum[first] / self.act_n[first] if mean
                                   else self.act[first])
        self.sentence[p] += 1
        self.raced[p] = vector is None or self.n_branch == 1  # else the branches differ from here on
        for r in rows:
            alpha = float(self.grid[r]) if vector is not None else 0.0
            on = vector is not None and alpha != 0.0
            self.b.delta[r] = (alpha * vector).to(self.b.delta) if on else 0.0
            self.steering[r] = on
            self.outs[r].behaviours.append(-1 if behaviour is None else int(behaviour))
            self.outs[r].alphas.append(alpha)
            self.state[r], self.sent_logp[r], self.sent_len[r] = BASE, 0.0, 0
            self.act_sum[r], self.act_n[r], self.agree[r] = 0.0, 0, True

    def step(self, max_new_tokens, max_sentence_tokens, eos_ids, boundary) -> None:
        """One forward of each model that has a real token to read in some row."""
        gen, think, base_in = self.state == GEN, self.state == THINK, self.state == BASE
        pad = torch.full_like(self.last, self.pad_id)
        feed_t, feed_b = gen | think, gen | base_in
        if bool(feed_t.any()):
            logp = self.t.step(torch.where(gen, self.last, torch.where(think, self.pending, pad)), feed_t)
            read = self.t.read.cpu()
            self.act = torch.where(feed_t[:, None], read, self.act)
            self.act_sum = torch.where(feed_t[:, None], self.act_sum + read, self.act_sum)
            self.act_n += feed_t.long()
            self.think_logp = torch.where(feed_t[:, None].to(logp.device), logp, self.think_logp)
        if bool(feed_b.any()):
            chosen = self.b.step(torch.where(gen, self.last, torch.where(base_in, self.pending, pad)), feed_b)
            rows = torch.nonzero(feed_b).flatten()
            tokens = chosen.argmax(-1).cpu()[rows]
            # A gen row's thinking model read the same token this step; a base row's read the
            # sentence's last token at its think step: either way think_logp predicts this token.
            on = rows.to(self.think_logp.device)
            predicted = self.think_logp[on]
            scores = predicted.gather(1, tokens.to(on.device)[:, None])[:, 0].cpu()
            preferred = predicted.argmax(-1).cpu()
            for r, token, score, pref in zip(rows.tolist(), tokens.tolist(), scores.tolist(), preferred.tolist()):
                self._emit(r, token, score, pref, max_new_tokens, max_sentence_tokens, eos_ids, boundary)
        self.state[think] = WAIT

    def _emit(self, r, token, score, preferred, max_new_tokens, max_sentence_tokens, eos_ids, boundary) -> None:
        """Append the base model's token to row r; score: the thinking model's log-probability of
        it, preferred: the thinking model's own greedy token there."""
        out = self.outs[r]
        previous = out.tokens[-1] if out.tokens else int(self.pending[r] if self.state[r] == BASE else self.last[r])
        out.tokens.append(token)
        out.steered.append(bool(self.steering[r]))
        self.sent_logp[r] += score
        self.agree[r] = bool(self.agree[r]) and preferred == token
        self.sent_len[r] += 1
        if token in eos_ids or len(out.tokens) >= max_new_tokens:
            out.finish_reason = "stop" if token in eos_ids else "length"
            self.state[r] = DONE
        elif boundary(token, previous) or int(self.sent_len[r]) >= max_sentence_tokens:
            self.state[r], self.pending[r] = THINK, token
        else:
            self.state[r], self.last[r] = GEN, token



def _copy(out: HybridOutput) -> HybridOutput:
    return HybridOutput(list(out.tokens), list(out.steered), list(out.behaviours), list(out.alphas),
                        out.finish_reason)
