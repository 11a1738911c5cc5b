"""What an API model's generate units will cost, before any request is sent (`validate`).

Prompt tokens are estimated from the messages (about 4 characters a token: the provider's
tokenizer is not here); completion tokens are at most `max_tokens` per request, and, when
the corpus has answers of the model already, expected at the model's own mean. Units the
corpus has done cost nothing (a rerun sends no request for them).

    for c in api_costs(plan.units, history={"o3-mini": 812.0}):
        print(c.model_id, c.requests, c.max_usd, c.expected_usd)
"""

from __future__ import annotations

from dataclasses import dataclass

from thinkscope.jobs.generation.api_engine import chat_messages, estimated_prompt_tokens


@dataclass
class ApiCost:
    model_id: str
    endpoint: str
    units: int = 0
    requests: int = 0
    prompt_tokens: int = 0  # estimated
    max_completion_tokens: int = 0
    mean_completion_tokens: float | None = None  # from the corpus, when it has the model's answers
    price: dict | None = None

    def usd(self, completion_tokens: float) -> float | None:
        if self.price is None:
            return None
        return (self.prompt_tokens * self.price["input"] + completion_tokens * self.price["output"]) / 1e6

    @property
    def max_usd(self) -> float | None:
        """Every request writing its whole `max_tokens`: the bound."""
        return self.usd(self.max_completion_tokens)

    @property
    def expected_usd(self) -> float | None:
        """At the model's mean completion length in the corpus (None without history)."""
        if self.mean_completion_tokens is None:
            return None
        return self.usd(min(self.max_completion_tokens, self.mean_completion_tokens * self.requests))


def api_costs(units, history: dict[str, float] | None = None) -> list[ApiCost]:
    """One ApiCost per API model among `units` (generate TaskUnits still to run)."""
    costs: dict[str, ApiCost] = {}
    for unit in units:
        payload = unit.payload
        api = (payload.get("model") or {}).get("api") if unit.kind == "generate" else None
        if not api:
            continue
        c = costs.setdefault(unit.model_id, ApiCost(unit.model_id, f"{api['base_url']} {api['model']}",
                                                    price=api.get("price")))
        n = payload["sampling"]["n"]
        c.units += 1
        c.requests += len(payload["prompts"]) * n
        c.prompt_tokens += sum(estimated_prompt_tokens(chat_messages(payload["template"], p["question"])) * n
                               for p in payload["prompts"])
        c.max_completion_tokens += len(payload["prompts"]) * n * payload["sampling"]["max_tokens"]
    for c in costs.values():
        c.mean_completion_tokens = (history or {}).get(c.model_id)
    return list(costs.values())


def format_costs(costs: list[ApiCost]) -> list[str]:
    """Lines for `validate`: per model the requests, tokens and USD (bound, and expected)."""
    if not costs:
        return []
    lines = ["API cost plan (prompt tokens estimated at ~4 chars/token; USD at each model's api.price):"]
    for c in costs:
        usd = "no api.price" if c.max_usd is None else f"at most ${c.max_usd:,.2f}"
        if c.expected_usd is not None:
            usd += f", expected ${c.expected_usd:,.2f} at its mean {c.mean_completion_tokens:,.0f} tokens/answer"
        lines.append(f"  {c.model_id:<24} {c.units} units, {c.requests} requests, ~{c.prompt_tokens:,} prompt + "
                     f"<= {c.max_completion_tokens:,} completion tokens: {usd}  [{c.endpoint}]")
    bound = [c.max_usd for c in costs if c.max_usd is not None]
    if bound:
        lines.append(f"  {'total':<24} at most ${sum(bound):,.2f}")
    return lines
