# `make test` and `make demo` create .venv from nothing when it is missing.
# torch 2.13.0 is installed first (a CPU build from this machine's disk) so that no later
# requirement can pull a multi-GB CUDA build.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
TORCH   := torch==2.13.0
# deepspeed: the ZeRO-3 test of talan train (an sdist that builds without torch: no CUDA ops, nothing pulled);
# bitsandbytes: the QLoRA tests (its wheel runs 4-bit and int8 layers on the CPU too). transformers and peft are
# pinned here (pyproject accepts transformers >= 4.57, peft >= 0.17): a release that changes a model's inputs must
# not fail CI before a session has seen it (transformers 5.25 changed Molmo 2's image pooling); HF_NEXT tests the
# newest.
DEPS    := "triton>=3.0" "transformers==5.24.0" "peft==0.21.2" safetensors tqdm matplotlib pyarrow deepspeed \
           bitsandbytes pytest pytest-benchmark pytest-xdist ruff

# Every pass runs on JOBS pytest-xdist workers (JOBS=0: in one process), each with one torch thread so that the
# workers do not oversubscribe the cores. The CPU passes keep a file on one worker (--dist loadfile: their
# module-scoped fixtures train a model once a file); the interpreter and compile passes hand out single tests
# (--dist worksteal: one file holds most of the compile time).
JOBS        ?= 2
PYTEST      := OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -n $(JOBS)
PYTEST_FILE := $(PYTEST) --dist loadfile
PYTEST_TEST := $(PYTEST) --dist worksteal

# The compile tests run a second time against the Triton that the GPU check machine's torch (2.11)
# pins, kept beside the venv's own (pip --target, no deps) and put first on PYTHONPATH for that run:
# ptxas versions differ in where they spill, and the GPU run compiles with that one.
TRITON_COMPAT := 3.6.0
COMPAT        := $(VENV)/triton-$(TRITON_COMPAT)

# The CPU and interpreter tests run a second time on the oldest transformers/peft that pyproject.toml
# accepts (the last transformers 4.x), kept beside the venv the same way with the versions they need
# of the hub client, tokenizers and accelerate; tests/test_stack_versions.py ties them to pyproject's floors.
# Only the tests that transformers or peft can change run there: not the files that check the kernels'
# references, the custom ops, the TF32 emulation, the benchmarks and the mutants on torch alone, nor
# the tests on talan study's quick run (a 70 s fixture); of the interpreter files, those that compare
# the kernels with peft's layers or drive a model.
HF_FLOOR_CPU_SKIP := $(addprefix --ignore=tests/,test_side_path_reference.py test_lora_ops_opcheck.py \
                     test_tf32_emulation.py test_benchmark_gates.py test_benchmarks_report.py \
                     test_benchmarks_quick.py test_mutants.py) \
                     $(addprefix --deselect=tests/test_study_analyze.py::,\
                     test_study_quick_writes_the_table_plots_and_checkpoints test_analyze_on_a_study_checkpoint \
                     test_analyze_without_backbone_needs_model_flag)
HF_FLOOR_INTERP   := $(addprefix tests/,test_lora_kernels_interp.py test_fused_lora_peft.py \
                     test_side_path_kernels_interp.py)
HF_FLOOR        := transformers==4.57.6 peft==0.17.1
HF_FLOOR_DEPS   := accelerate==1.10.1 huggingface_hub==0.36.2 tokenizers==0.22.2 requests urllib3 idna certifi \
                   charset-normalizer
HF_COMPAT       := $(VENV)/hf-floor

# The host tests (tests/test_hosts.py, tests/test_vl_hosts.py) run a third time on the transformers of the GPU check
# machine, between the floor and the venv's: the kwargs each layer hands its attention, and their names, changed
# across 5.x (a hybrid's linear attention got the cache as "cache_params" there). Kept beside the venv the same way
# with the hub client it needs.
HF_MID      := transformers==5.17.0
HF_MID_DEPS := huggingface_hub==1.33.0 httpx==0.28.1 httpcore==1.0.9 h11==0.16.0 anyio==4.16.0 \
               certifi==2026.10.19.post1 idna==3.20
HF_MID_DIR  := $(VENV)/hf-mid

# They run a fourth time on the newest transformers, which pip does not put in the venv here: it requires kernels
# 0.19, which this machine's registry lacks (transformers imports it only to load kernels from the hub), so
# "transformers>=5,<6" resolves to the release before. Kept beside the venv the same way; the venv's hub client and
# tokenizers are the ones it needs.
HF_NEXT     := transformers==5.25.0
HF_NEXT_DIR := $(VENV)/hf-next
# the tests that the transformers between the floor and the venv's, and after it, can change
HF_SIDE_TESTS := $(addprefix tests/,test_stack_versions.py test_host_coverage.py test_hosts.py test_vl_hosts.py \
                 test_patch_model.py test_decode_state.py test_peft_prefix_tuning.py)

# TRL (the SFTTrainer tests) and datasets, kept beside the venv the same way and put on PYTHONPATH for the
# CPU pass on the venv's transformers 5 only: transformers 4.x's Trainer imports datasets whenever it is
# installed, and datasets 5 needs a newer huggingface_hub than the HF floor's. Pinned: no deps are resolved
# there (the venv holds the rest of what they need).
TRL_COMPAT := $(VENV)/trl
TRL_PKGS   := trl==1.16.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 xxhash==4.1.0 pandas==3.1.1

# Opt-in, never part of `make test`: the CPU and interpreter suites on an older torch, in a venv of its own.
# PyPI has CUDA builds only of an older torch for x86_64 (with their CUDA libraries, which also run on a
# CPU, the torch 2.4.1 venv took 5.3 GB), so make test installs none. The default is the floor of pyproject (torch 2.4.1, which pins
# Triton 3.0, on transformers 4.57.6 / peft 0.17.1; numpy < 2, which Triton < 3.2's interpreter needs).
# The GPU check machine's torch: make test-old-torch OLD_TORCH=2.11.0 OLD_TORCH_DEPS='"transformers>=5,<6" \
#   "peft>=0.17" "numpy<2.4"' (Triton 3.6's interpreter needs numpy < 2.4).
OLD_TORCH      ?= 2.4.1
OLD_TORCH_DEPS ?= transformers==4.57.6 peft==0.17.1 accelerate==1.10.1 "numpy<2"
OLD_VENV       := .venv-torch-$(OLD_TORCH)

.PHONY: venv test test-old-torch mutants lint demo report bench bench-quick clean

venv: $(STAMP)

$(COMPAT)/.installed: $(STAMP)
	$(BIN)/python -m pip install --quiet --no-deps --target $(COMPAT) triton==$(TRITON_COMPAT)
	touch $@

$(TRL_COMPAT)/.installed: $(STAMP) Makefile
	rm -rf $(TRL_COMPAT)
	$(BIN)/python -m pip install --quiet --no-deps --target $(TRL_COMPAT) $(TRL_PKGS)
	touch $@

$(HF_MID_DIR)/.installed: $(STAMP) Makefile
	rm -rf $(HF_MID_DIR)
	$(BIN)/python -m pip install --quiet --no-deps --target $(HF_MID_DIR) $(HF_MID) $(HF_MID_DEPS)
	touch $@

$(HF_NEXT_DIR)/.installed: $(STAMP) Makefile
	rm -rf $(HF_NEXT_DIR)
	$(BIN)/python -m pip install --quiet --no-deps --target $(HF_NEXT_DIR) $(HF_NEXT)
	touch $@

$(HF_COMPAT)/.installed: $(STAMP) Makefile
	rm -rf $(HF_COMPAT)
	$(BIN)/python -m pip install --quiet --no-deps --target $(HF_COMPAT) $(HF_FLOOR) $(HF_FLOOR_DEPS)
	touch $@

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet $(TORCH) $(DEPS)
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

lint: venv
	$(BIN)/ruff check talan talan_kernels tests benchmarks

test: venv lint $(COMPAT)/.installed $(HF_COMPAT)/.installed $(HF_MID_DIR)/.installed $(HF_NEXT_DIR)/.installed \
      $(TRL_COMPAT)/.installed
	PYTHONPATH=$(TRL_COMPAT) $(PYTEST_FILE) -m "not gpu and not compile and not interpreter" tests
	TRITON_INTERPRET=1 $(PYTEST_TEST) -m "interpreter" tests
	$(PYTEST_TEST) -m "compile" tests
	PYTHONPATH=$(COMPAT) TALAN_EXPECT_TRITON=$(TRITON_COMPAT) $(PYTEST_TEST) -m "compile" tests
	PYTHONPATH=$(HF_COMPAT) TALAN_EXPECT_HF="$(HF_FLOOR)" \
		$(PYTEST_FILE) -m "not gpu and not compile and not interpreter" $(HF_FLOOR_CPU_SKIP) tests
	PYTHONPATH=$(HF_COMPAT) TALAN_EXPECT_HF="$(HF_FLOOR)" TRITON_INTERPRET=1 $(PYTEST_TEST) -m "interpreter" \
		$(HF_FLOOR_INTERP)
	PYTHONPATH=$(HF_MID_DIR) TALAN_EXPECT_HF="$(HF_MID)" $(PYTEST_FILE) $(HF_SIDE_TESTS)
	PYTHONPATH=$(HF_NEXT_DIR) TALAN_EXPECT_HF="$(HF_NEXT)" $(PYTEST_FILE) $(HF_SIDE_TESTS)

test-old-torch:
	test -x $(OLD_VENV)/bin/python || $(PY) -m venv $(OLD_VENV)
	$(OLD_VENV)/bin/python -m pip install --quiet torch==$(OLD_TORCH) $(OLD_TORCH_DEPS) safetensors tqdm \
		matplotlib deepspeed pytest pytest-benchmark
	PYTHONPATH=. $(OLD_VENV)/bin/python -m pytest -q -rs -m "not gpu and not compile and not interpreter" tests
	PYTHONPATH=. TRITON_INTERPRET=1 $(OLD_VENV)/bin/python -m pytest -q -rs -m "interpreter" tests

# Opt-in, never part of `make test`: small wrong changes to the kernels and the glue, each of which the tests named
# beside it must fail (tests/mutants.py), JOBS at a time (JOBS=0: one) on copies of their own; TRL on the path for
# the trainer's SFTTrainer tests.
mutants: venv $(TRL_COMPAT)/.installed
	PYTHONPATH=$(TRL_COMPAT) OMP_NUM_THREADS=1 $(BIN)/python tests/mutants.py --jobs $(if $(filter 0,$(JOBS)),1,$(JOBS))

demo: venv
	$(BIN)/talan demo

report: venv
	$(BIN)/talan report

bench: venv
	$(BIN)/python -m pytest -q -rs benchmarks

bench-quick: venv
	$(BIN)/python -m pytest -q -rs benchmarks --quick

clean:
	rm -rf $(VENV) .venv-torch-* build *.egg-info .pytest_cache
