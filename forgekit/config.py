"""The fine-tuning config: an LLMForge-compatible YAML schema, validated strictly, every problem at once.

Field names follow LLMForge so its YAML files validate unchanged; forgekit's additions are documented on
the field. LLMForge keys forgekit does not need (`dataset_size_scaling_factor`, `flash_attention_2`, the older
`checkpoint_every_n_epochs`) are accepted and translated or dropped, each noted (`FinetuneConfig.notes`, printed
by `forgekit validate`); `lora_config` is checked key by key against peft's `LoraConfig`. `load_config` reads a YAML file (or dict), applies dotted command-line overrides
(`learning_rate=2e-4`, `lora_config.r=16`), and raises one `ConfigError` listing every problem with its
dotted key, what was expected and a did-you-mean for misspelt keys.

Values the run derives (context length from the data, epochs from `min_num_update_steps`, batch sizes
for the hardware) are filled by `forgekit.prepare.prepare_data`, which returns a resolved copy whose
`derived` set names them; `format_config` prints the config with those values marked.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import functools
import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from forgekit.errors import ForgekitError
from forgekit.formats import BUILTIN_FORMATS, PromptFormatConfig

__all__ = [
    "DEFAULT_LORA",
    "ConfigError",
    "FinetuneConfig",
    "PreferenceTuningConfig",
    "PromptFormatConfig",
    "apply_overrides",
    "format_config",
    "is_secret_key",
    "load_config",
    "mask_secrets",
]

# Default mode's adapter: LoRA rank 8 on every linear layer (peft's "all-linear" shortcut).
DEFAULT_LORA: dict[str, Any] = {"r": 8, "lora_alpha": 16, "lora_dropout": 0.05, "target_modules": "all-linear"}


class ConfigError(ForgekitError):
    """A config (or its DeepSpeed file) is invalid; `problems` lists each one as `key: message`."""

    def __init__(self, problems: list[str], source: str | None = None):
        self.source = source
        super().__init__(problems)

    def render(self) -> str:
        where = f" in {self.source}" if self.source else ""
        return "\n".join([f"{len(self.problems)} problem(s){where}:"] + [f"  - {p}" for p in self.problems])


class _Strict(BaseModel):
    # allow_inf_nan: `learning_rate: .inf` (or "nan" from the command line) is no number a run can use
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class GenerationConfig(_Strict):
    prompt_format: PromptFormatConfig | str | None = Field(
        None,
        description=(
            "Role templates (LLMForge), or the name of a built-in format (llama3, mistral, gemma2, chatml, "
            "qwen2.5, smollm2, passthrough). Unset: the tokenizer's own chat_template."
        ),
    )
    stopping_sequences: list[str] | None = Field(
        None,
        description="Strings that end a generation besides the end-of-turn token: saved in each checkpoint's "
        "generation_config.json (`stop_strings`), where forgekit generate / eval-tools and forgekit merge read them.",
    )

    @field_validator("prompt_format")
    @classmethod
    def _known_builtin(cls, v: Any) -> Any:
        if isinstance(v, str) and v not in BUILTIN_FORMATS:
            near = difflib.get_close_matches(v, list(BUILTIN_FORMATS), n=1)
            hint = f" (did you mean '{near[0]}'?)" if near else ""
            raise ValueError(f"unknown built-in format '{v}'{hint}; known: {', '.join(sorted(BUILTIN_FORMATS))}")
        return v


class DeepSpeedSection(_Strict):
    config_path: str = Field(..., description="DeepSpeed JSON; 'auto' fields are filled from this config.")


class ClassifierConfig(_Strict):
    label_tokens: list[str] = Field(..., min_length=2, description="One new special token per class.")
    eval_metrics: list[Literal["accuracy", "f1", "prauc"]] = Field(
        default_factory=lambda: ["accuracy"],
        description=(
            "Evaluation metrics (LLMForge's names): accuracy (the model's next token is the label), f1 (macro F1 "
            "over the classes), prauc (macro area under the precision-recall curve, one class against the rest, "
            "scored by the softmax over the label tokens). Accuracy is always reported."
        ),
    )

    @field_validator("label_tokens")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError("label tokens must be unique")
        if any(not t or t != t.strip() for t in v):
            raise ValueError("label tokens must be non-empty and have no surrounding whitespace")
        return v


class LoggerConfig(_Strict):
    provider: Literal["wandb", "mlflow", "tensorboard"]
    provider_config: dict[str, Any] = Field(
        default_factory=dict,
        description="Passed to the provider: for wandb and mlflow each key becomes the WANDB_<KEY> / MLFLOW_<KEY> "
        "environment variable transformers' callback reads (project, entity, tags, tracking_uri, experiment_name, "
        "...; wandb's group is WANDB_RUN_GROUP, mlflow's hf_mlflow_log_artifacts is HF_MLFLOW_LOG_ARTIFACTS: "
        "checkpoints logged as artifacts); for tensorboard, log_dir (default <run dir>/tensorboard). Secrets "
        "(passwords, tokens, API keys) belong in the environment, never here (forgekit.tracking).",
    )

    @field_validator("provider_config")
    @classmethod
    def _no_secrets(cls, v: dict[str, Any]) -> dict[str, Any]:
        # the resolved config is written to the run directory (config.yaml): no credential may reach it
        from urllib.parse import urlsplit

        problems = [f"logger.provider_config.{k}: a secret; set it in the environment (e.g. MLFLOW_TRACKING_PASSWORD, "
                    "WANDB_API_KEY), not in the config" for k in v if is_secret_key(k)]
        problems += [f"logger.provider_config.{k}: the URI holds a password; set MLFLOW_TRACKING_USERNAME and "
                     "MLFLOW_TRACKING_PASSWORD in the environment instead" for k, value in v.items()
                     if isinstance(value, str) and "://" in value and urlsplit(value).password is not None]
        if problems:  # one problem per key (load_config splits them)
            raise ValueError(" | ".join(problems))
        return v


class CheckpointFrequency(_Strict):
    unit: Literal["steps", "epochs"] = "epochs"
    frequency: int = Field(1, ge=1)


class LigerConfig(_Strict):
    enabled: bool | None = Field(None, description="Liger kernels. Unset: on for GPU runs when liger-kernel is installed.")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="Passed to liger's apply function.")


class LogprobScalingConfig(_Strict):
    """LLMForge's Ray Data actors that computed the reference log-probs beside training. forgekit computes them on
    the training workers before the first step (`precompute_ref_log_probs`): only `batch_size` is used."""

    custom_resources: dict[str, float] = Field(default_factory=dict, description="Not used (no separate actors).")
    concurrency: int | None = Field(None, ge=1, description="Not used (every training worker takes its share).")
    batch_size: int | None = Field(None, ge=1, description="Pairs per forward pass of the reference log-probs "
                                   "(TRL's precompute_ref_batch_size); unset: the plan's micro batch.")


class PreferenceTuningConfig(_Strict):
    """`task: preference_tuning`: LLMForge's section (`beta`, `logprob_processor_scaling_config`) plus the TRL
    DPOConfig / KTOConfig knobs users know, with TRL's defaults (forgekit.worker.preference builds the trainer)."""

    beta: float = Field(0.1, gt=0, description=(
        "How far the policy may move from the reference: higher keeps it closer (TRL's beta; DPO's β; IPO's τ "
        "regularisation; SimPO's reward scale, where 2.0-2.5 is the paper's range)."))
    loss_type: Literal["sigmoid", "ipo", "hinge", "robust", "kto", "simpo"] = Field("sigmoid", description=(
        "sigmoid: DPO (Rafailov et al. 2023); ipo: IPO (Azar et al. 2023, length-normalised as in TRL); hinge: "
        "SLiC's hinge on the DPO margin; robust: DPO with label_smoothing as the probability a label is flipped "
        "(Chowdhury et al. 2024); kto: KTO (Ethayarajh et al. 2024) on unpaired completions labelled desirable or "
        "not, TRL's KTOTrainer; simpo: SimPO (Meng et al. 2024), reference-free: the length-normalised log-prob "
        "margin minus simpo_gamma (TRL's sigmoid_norm loss with constant reference log-probs; its logged rewards "
        "are then β x the summed log-probs, the rejected side offset by simpo_gamma/β per token: compare SimPO runs "
        "by loss, not by reward accuracy)."))
    label_smoothing: float = Field(0.0, ge=0, lt=0.5, description=(
        "TRL's label_smoothing: for loss_type robust the probability a preference label is flipped (0.1 is typical)."))
    simpo_gamma: float = Field(0.5, ge=0, description="SimPO's target reward margin γ (loss_type simpo only).")
    rpo_alpha: float | None = Field(None, ge=0, description=(
        "Weight of a supervised term added to the pairwise loss: the negative log-likelihood of the chosen answer "
        "(RPO, Pang et al. 2024; TRL's loss_type [<loss>, 'sft'] with loss_weights [1, rpo_alpha]). Plain DPO can "
        "raise the margin by making both answers less likely, which small models show as generations that lose "
        "the preferred format; this keeps the chosen answers likely (1.0 is the paper's value). Unset: none. Not "
        "with loss_type kto or simpo."))
    desirable_weight: float = Field(1.0, gt=0, description="KTO: weight of the desirable (label true) completions.")
    undesirable_weight: float = Field(1.0, gt=0, description="KTO: weight of the undesirable (label false) ones.")
    precompute_ref_log_probs: bool = Field(True, description=(
        "Compute the reference log-probs of every pair once, before the first step (TRL's precompute_ref_log_probs), "
        "cached beside the tokenized data, instead of a reference forward pass in every step. A full fine-tune then "
        "holds no reference copy of the weights. On by default, faster and never larger: the tests' tiny model on 2 "
        "CPU cores, 32 pairs x 2 epochs, LoRA 17.2 s vs 19.6 s in all (precompute pass included; 1.40 vs 2.36 s per "
        "step), full 14.6 s vs 23.6 s and no reference copy, the same losses "
        "(benchmarks/preference_ref_logps.py)."))
    logprob_processor_scaling_config: LogprobScalingConfig | None = Field(None, description=(
        "LLMForge's reference log-prob actors: accepted; its batch_size sets the precompute batch, the rest is noted "
        "as not used by `forgekit validate`."))

    @property
    def reference_free(self) -> bool:
        return self.loss_type == "simpo"

    @model_validator(mode="after")
    def _rpo_needs_a_pairwise_reference_loss(self) -> PreferenceTuningConfig:
        if self.rpo_alpha and self.loss_type in ("kto", "simpo"):
            raise ValueError(f"rpo_alpha adds a supervised term to a DPO-family loss: not with loss_type "
                             f"{self.loss_type} (unset rpo_alpha, or use sigmoid, ipo, hinge or robust)")
        return self


class FinetuneConfig(_Strict):
    """Everything a fine-tuning run uses. Unset optional values are derived (see module docstring)."""

    # --- model and data
    model_id: str = Field(..., description="HF hub id, local dir, or an embedded alias (smollm2-135m-instruct).")
    train_path: str = Field(..., description="Chat JSONL: local path, file://, s3://, gs://, hf://, or a HF dataset name.")
    valid_path: str | None = Field(None, description="Validation JSONL; unset: no evaluation.")
    task: Literal["causal_lm", "instruction_tuning", "classification", "preference_tuning"] = Field(
        "instruction_tuning",
        description="instruction_tuning: loss on the assistant turns; causal_lm: on every token (continued "
        "pre-training); classification: on one label token per example (classifier_config; a config with "
        "classifier_config and no task is a classification run, as in LLMForge); preference_tuning: DPO and its "
        "family on chosen/rejected pairs (or KTO's labelled completions) with TRL's trainers "
        "(preference_tuning_config; forgekit.preference reads the data).",
    )
    context_length: int | None = Field(None, ge=8, description=(
        "Max tokens per example. Unset: derived from the data: the power of two at or above the 95th percentile "
        "of the training examples' token lengths (at least 512), capped at the model's max_position_embeddings. "
        "LLMForge takes the larger of the data's need and the model's maximum instead; forgekit keeps a derived "
        "value within the positions the model was trained on (and the memory a batch needs within what the data "
        "needs): a context past the model's maximum (RoPE scaling, rope_scaling) is extended only when set here. "
        "Longer examples follow overlength; the manifest counts them."))
    padding: Literal["longest", "max_length"] = Field(
        "longest", description="'max_length' pads every batch to context_length (worst-case memory)."
    )
    packing: bool | None = Field(
        None,
        description="forgekit: pack several examples per row with per-example position ids (no cross-attention). "
        "Unset: on for GPU runs of instruction_tuning / causal_lm with padding: longest, off on CPU.",
    )
    pad_to_multiple_of: int | None = Field(
        None,
        ge=1,
        description="forgekit: round each padded batch's length up to this multiple (batches shorter than one "
        "multiple stay as they are). Unset: 64 on CPU workers "
        "(few distinct batch shapes keep a CPU process's memory flat; glibc's heap grows with every new shape: "
        "5.2 GB flat vs 5.6 -> 7.8 GB over 40 SmolLM2 LoRA steps), 1 on GPUs.",
    )
    overlength: Literal["auto", "drop", "truncate"] = Field(
        "auto",
        description="forgekit: examples longer than context_length. auto: truncate for causal_lm, else drop. "
        "LLMForge truncates every over-length example; forgekit's auto drops those of instruction_tuning and "
        "classification, whose trained tokens (the answer, the label) come last and would be cut away, leaving "
        "an answer trained to stop mid-way. Set truncate to follow LLMForge. The manifest (and `forgekit "
        "validate`) count dropped_overlength and truncated.",
    )
    num_preprocess_workers: int | None = Field(
        None,
        ge=1,
        description="forgekit (the Silogen engine's --num-preprocess-workers): processes that tokenize the data "
        "on the driver. Unset: 1 below 30,000 examples, else one per CPU core of the driver (at most 8): on 2 cores "
        "40,000 chats take 16.4 s in one process, 10.8 s in two, on 16 cores 24.3 s in one, 14.3 s in 8 and 16.2 s "
        "in 16; below ~20,000 starting the processes costs more. The "
        "tokens are the same for any value (it is not part of the tokenization cache's key).",
    )
    # --- hardware and batch
    num_devices: int = Field(1, ge=1, description="Number of training workers (GPUs, or CPU processes).")
    use_gpu: bool | None = Field(None, description="forgekit: None = GPUs when the Ray cluster has them.")
    train_batch_size_per_device: int | None = Field(None, ge=1)
    eval_batch_size_per_device: int | None = Field(None, ge=1)
    gradient_accumulation_steps: int | None = Field(None, ge=1)
    total_batch_size: int | None = Field(
        None, ge=1, description="forgekit (Silogen rule): target examples per optimizer step across all workers."
    )
    max_batch_size_per_device: int | None = Field(
        None, ge=1, description="forgekit: largest per-device micro batch that fits; used with total_batch_size."
    )
    worker_resources: dict[str, float] = Field(default_factory=dict, description="Extra Ray resources per worker.")
    trainer_resources: dict[str, float] = Field(default_factory=dict, description=(
        "LLMForge's Ray resources of the trainer actor; accepted, but not used: Ray Train 2.60 runs its controller "
        "without reserved resources (a warning says so). Set the workers' resources with worker_resources."))
    # --- optimisation
    num_epochs: int | None = Field(None, ge=1, description="Unset: enough epochs for min_num_update_steps.")
    min_num_update_steps: int = Field(100, ge=1)
    max_steps: int | None = Field(None, ge=1, description="forgekit: stop after this many optimizer steps.")
    learning_rate: float = Field(1e-4, gt=0)
    lr_scheduler_type: Literal[
        "linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
        "inverse_sqrt", "cosine_with_min_lr", "warmup_stable_decay",
    ] = "cosine"
    num_warmup_steps: int = Field(10, ge=0)
    weight_decay: float = Field(0.0, ge=0, description="forgekit: AdamW weight decay (LoRA and full fine-tuning).")
    max_grad_norm: float = Field(
        1.0, gt=0, description="forgekit: gradient clipping norm (DeepSpeed's gradient_clipping when it is \"auto\")."
    )
    neftune_noise_alpha: float | None = Field(
        None, gt=0,
        description="forgekit: NEFTune (Jain et al. 2023): uniform noise of scale alpha/sqrt(length*hidden) added "
        "to the input embeddings while training (transformers' Trainer hook; evaluation and generation see none). "
        "5 is the paper's usual value; null: off.",
    )
    gradient_checkpointing: bool = Field(
        True,
        description="Activation checkpointing: every decoder layer on CPU workers; on GPUs only as many layers as "
        "the free memory needs (forgekit.perf.checkpoint_period; possibly none), logged as checkpointed_layers.",
    )
    attn_implementation: Literal["auto", "varlen", "sdpa", "eager", "flex_attention", "flash_attention_2"] = Field(
        "auto",
        description="auto: PyTorch's varlen FlashAttention on CUDA GPUs (forgekit.perf), flex_attention for packed "
        "rows where varlen is missing, sdpa on CPU.",
    )
    precision: Literal["auto", "bf16", "fp32"] = Field(
        "auto",
        description="forgekit: auto = bf16 on GPUs that support it, else fp32; on CPU workers bf16 autocast where "
        "the CPU has AMX or AVX512-BF16 instructions (fp32 for task: preference_tuning, whose rewards, differences "
        "of log-probs, bf16 rounding turns into noise), else fp32. bf16 on a GPU asks for bf16 weights (an error "
        "where unsupported); on a CPU worker it means bf16 autocast (weights, gradients and optimizer in fp32, "
        "matrix products in bf16), fp32 with a warning where the CPU lacks the instructions. LoRA updates are "
        "added to the layer outputs in fp32 there, so small updates are not rounded away: the quickstart's eval "
        "loss within 0.2% of fp32's at lr 2e-4 and 2e-3 (benchmarks/results/cpu-precision-default.json), 2.06x "
        "Trainer + peft in fp32 on 2 cores (benchmarks/results/README.md). fp32 turns bf16 off (exact "
        "comparisons with an fp32 reference want it).",
    )
    torch_compile: bool = Field(
        False,
        description="forgekit: torch.compile each decoder layer (GPU, ZeRO 0-2). Off by default: with torch 2.11 it "
        "fails inside Ray + DeepSpeed workers (benchmarks/results/README.md).",
    )
    supervised_logits: bool = Field(
        True,
        description="forgekit: compute the output layer and the loss only at positions that are trained (labels not "
        "-100), for the plain decoder architectures (forgekit.perf.PLAIN_CAUSAL_LM_TYPES: Llama, Mistral, Qwen, ...); "
        "the same loss, without the tokens x vocabulary logits of the prompts (SmolLM2 LoRA on a CPU: "
        "benchmarks/results/README.md). Not used with Liger's fused cross-entropy, which skips them itself, nor "
        "for classification. Off only to compare.",
    )
    lora_config: dict[str, Any] | None = Field(
        None, description="peft LoraConfig keywords; unset = full fine-tuning (LoRA r=8 in default mode)."
    )
    quant_conf: dict[str, Any] | None = Field(
        None,
        description="forgekit (the Silogen engine's section): load the base model quantized by bitsandbytes and "
        "train a LoRA adapter on it (QLoRA): quantization_type: bits-and-bytes, load_in_4bit or load_in_8bit, and "
        "transformers BitsAndBytesConfig keywords (bnb_4bit_quant_type: nf4 | fp4, bnb_4bit_compute_dtype, "
        "bnb_4bit_use_double_quant, bnb_4bit_quant_storage). Needs lora_config and the quant extra "
        "(forgekit.quantization). Unset: the base model in the training dtype.",
    )
    rope_scaling: dict[str, Any] | None = Field(
        None,
        description="forgekit: rope scaling for context extension; unset and context_length > model max: linear.",
    )
    liger_kernel: LigerConfig = Field(default_factory=LigerConfig)
    deepspeed: DeepSpeedSection | None = None
    seed: int = Field(42, ge=0, le=2**32 - 1, description="Random seed (numpy takes 0 to 2**32 - 1).")
    trust_remote_code: bool = Field(False, description=(
        "forgekit: load a model whose config.json names its own Python code (`auto_map`), running that code. Off: "
        "such a model is an error that names this field. Turn it on only for a model whose code you trust."))
    # --- prompts and tasks
    generation_config: GenerationConfig = Field(default_factory=GenerationConfig)
    classifier_config: ClassifierConfig | None = None
    preference_tuning_config: PreferenceTuningConfig | None = Field(None, description=(
        "task: preference_tuning's loss and reference (unset: DPO, beta 0.1, reference log-probs precomputed)."))
    # --- continued fine-tuning
    initial_base_model_ckpt_path: str | None = Field(None, description="Full weights to start from.")
    initial_adapter_model_ckpt_path: str | None = Field(None, description="LoRA adapter to continue training.")
    # --- outputs
    output_dir: str = "runs"
    run_name: str | None = Field(None, description=(
        "forgekit: run directory name; unset = model, lora|full and a hash of the config and data, so that "
        "re-running the same command finds (and resumes) the same run."))
    checkpoint_and_evaluation_frequency: CheckpointFrequency = Field(default_factory=CheckpointFrequency)
    num_checkpoints_to_keep: int = Field(1, ge=1, description=(
        "Checkpoints kept on disk: the best this many by eval loss (the newest ones without a valid_path), plus "
        "the latest, which a resume starts from, when it is not among them."))
    save_optimizer_state: bool = Field(
        True,
        description="forgekit: false = checkpoints hold the model (or adapter) and tokenizer only, no optimizer, "
        "scheduler or RNG state: about 1/7 of the disk of a full fine-tune with Adam (an 8B ZeRO-3 checkpoint "
        "drops from ~110 GB to 16 GB), but an interrupted run cannot resume; continue from its checkpoint as a "
        "new stage (initial_base_model_ckpt_path / initial_adapter_model_ckpt_path) instead.",
    )
    logging_steps: int = Field(1, ge=1, description="forgekit: optimizer steps between metrics lines.")
    profile_steps: tuple[int, int] | None = Field(
        None,
        description="forgekit: [first, last] optimizer steps (1-based) to record with the PyTorch profiler on "
        "rank 0: <run dir>/profile/ gets summary.json (seconds per step and, on a GPU, the share of it the GPU "
        "sat idle waiting for the host), ops.txt (the costliest operators) and trace.json.gz (open it in "
        "https://ui.perfetto.dev). Unset: no profiling.",
    )
    logger: LoggerConfig | None = None

    _derived: set[str] = PrivateAttr(default_factory=set)
    _notes: list[str] = PrivateAttr(default_factory=list)  # what load_config did with LLMForge-only keys

    @field_validator("run_name")
    @classmethod
    def _a_name(cls, v: str | None) -> str | None:
        # the run directory is output_dir/run_name: a path here would put the run (and its deletions) elsewhere
        if v is not None and not RUN_NAME.fullmatch(v):
            raise ValueError("expected a name, not a path: letters, digits and . _ - = + (no '/', no '..', not "
                             "starting with '.'); output_dir chooses where runs go")
        return v

    @field_validator("lora_config")
    @classmethod
    def _lora_keys(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        """Every key a peft LoraConfig field, every value of that field's type; then peft's own checks."""
        if v is None:
            return v
        from peft import LoraConfig

        known = {f.name for f in dataclasses.fields(LoraConfig)}
        problems = [f"lora_config.{k}: not a peft LoraConfig field{_did_you_mean(k, known, LORA_ALIASES)}"
                    for k in v if k not in known]
        checked = {}
        for key, value in v.items():
            checked[key], why = _lora_value(key, value) if key in known else (value, None)
            if why:
                problems.append(f"lora_config.{key}: {why}")
        v = checked
        if not problems:
            import warnings

            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    LoraConfig(**v)
            except (ValueError, TypeError) as e:  # peft's own consistency checks (__post_init__)
                problems.append(f"lora_config: {str(e).strip()}")
        if problems:  # one problem per key (load_config splits them)
            raise ValueError(" | ".join(problems))
        return v

    @field_validator("quant_conf")
    @classmethod
    def _quant_keys(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        """Every key a transformers BitsAndBytesConfig field (or quantization_type), every value of its type."""
        if v is None:
            return v
        from forgekit.quantization import check_quant_conf

        v, problems = check_quant_conf(v)
        if problems:  # one problem per key (load_config splits them)
            raise ValueError(" | ".join(problems))
        return v

    @model_validator(mode="before")
    @classmethod
    def _task_from_classifier_config(cls, data: Any) -> Any:
        # as in LLMForge, a config with classifier_config and no task is a classification run
        if isinstance(data, dict) and "task" not in data and data.get("classifier_config"):
            data = {**data, "task": "classification"}
        return data

    @model_validator(mode="after")
    def _cross_field(self) -> FinetuneConfig:
        problems = []
        if self.task == "classification" and self.classifier_config is None:
            problems.append("classifier_config.label_tokens is required when task is classification")
        if self.task != "classification" and self.classifier_config is not None:
            problems.append(f"classifier_config is only used with task: classification (task is {self.task})")
        if self.initial_adapter_model_ckpt_path and self.lora_config is None:
            problems.append("initial_adapter_model_ckpt_path needs lora_config (an adapter continues as LoRA)")
        if self.quant_conf and self.lora_config is None:
            problems.append("quant_conf: a quantized base model cannot be fully fine-tuned (its 4/8-bit weights take "
                            "no updates); add lora_config to train a LoRA adapter on it (QLoRA), or remove quant_conf")
        if self.max_batch_size_per_device and not self.total_batch_size:
            problems.append("max_batch_size_per_device is only used together with total_batch_size")
        per_device, accumulation = self.train_batch_size_per_device, self.gradient_accumulation_steps
        # both present and multiplying out to the total is what a resolved config holds (the values derived
        # from total_batch_size), so the run directory's config.yaml and the worker's re-validation pass
        derived_from_total = per_device and accumulation and per_device * accumulation * self.num_devices == (
            self.total_batch_size
        )
        if self.total_batch_size and (per_device or accumulation) and not derived_from_total:
            problems.append(
                "total_batch_size derives train_batch_size_per_device and gradient_accumulation_steps: "
                "set either total_batch_size (+ max_batch_size_per_device) or those two, not both"
            )
        steps = self.profile_steps
        if steps and len(steps) == 2 and not 1 <= steps[0] <= steps[1]:
            problems.append(f"profile_steps: expected [first, last] with 1 <= first <= last, got {list(self.profile_steps)}")
        if self.packing and self.task == "classification":
            problems.append("packing is not supported for task: classification (one label per row)")
        if self.task == "preference_tuning" and self.packing:
            problems.append("packing is not supported for task: preference_tuning (each pair is its own rows)")
        if self.task != "preference_tuning" and self.preference_tuning_config is not None:
            problems.append(f"preference_tuning_config is only used with task: preference_tuning (task is {self.task})")
        if self.packing and self.padding == "max_length":
            problems.append("packing: true has no padding; remove padding: max_length")
        if problems:
            raise ValueError(" | ".join(problems))
        return self

    # --- derived, read-only views
    @property
    def is_lora(self) -> bool:
        return self.lora_config is not None

    @property
    def derived(self) -> set[str]:
        """Names of fields whose values were derived rather than written by the user."""
        return set(self._derived)

    @property
    def notes(self) -> list[str]:
        """What loading did with LLMForge-only keys (`flash_attention_2: false -> attn_implementation: sdpa`)."""
        return list(self._notes)


RUN_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._=+-]{0,199}")
# provider_config keys (any part of the name) that hold credentials: rejected by validation, masked when shown
SECRET_WORDS = ("password", "passwd", "token", "api_key", "apikey", "secret", "credential", "private_key",
                "access_key")


def is_secret_key(key: str) -> bool:
    """Whether a settings key names a credential (`api_key`, `MLFLOW_TRACKING_PASSWORD`, `auth`, `key`)."""
    k = str(key).lower()
    return any(word in k for word in SECRET_WORDS) or k in ("key", "auth", "authorization")


def mask_secrets(value: Any, key: str = "") -> Any:
    """`value` with every credential replaced by `***`: values under secret keys, passwords in URIs."""
    from urllib.parse import urlsplit

    if key and is_secret_key(key) and value not in (None, ""):
        return "***"
    if isinstance(value, dict):
        return {k: mask_secrets(v, str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [mask_secrets(v) for v in value]
    if isinstance(value, str) and "://" in value:
        with contextlib.suppress(ValueError):
            if urlsplit(value).password is not None:
                from forgekit.storage import redact

                return redact(value)
    return value


def _non_finite(data: Any, key: str = "") -> list[str]:
    """Dotted keys of every NaN or infinite float in `data`, however deep (`lora_config.lora_dropout`)."""
    import math

    if isinstance(data, float) and not math.isfinite(data):
        return [key]
    if isinstance(data, dict):
        return [k for name, v in data.items() for k in _non_finite(v, f"{key}.{name}" if key else str(name))]
    if isinstance(data, list):
        return [k for i, v in enumerate(data) for k in _non_finite(v, f"{key}[{i}]")]
    return []


# keys holding local paths, in which `~` means the home directory (as in a shell)
PATH_KEYS = ("model_id", "train_path", "valid_path", "initial_base_model_ckpt_path", "initial_adapter_model_ckpt_path",
             "output_dir")


def _expand_home(data: dict) -> dict:
    """`data` with a leading `~` of its path values expanded, everywhere a run reads them (driver and workers)."""
    data = dict(data)
    for key in PATH_KEYS:
        if isinstance(data.get(key), str) and data[key].startswith("~"):
            data[key] = os.path.expanduser(data[key])
    ds = data.get("deepspeed")
    if isinstance(ds, dict) and isinstance(ds.get("config_path"), str) and ds["config_path"].startswith("~"):
        data["deepspeed"] = {**ds, "config_path": os.path.expanduser(ds["config_path"])}
    return data


def _did_you_mean(word: str, choices: set[str] | list[str], aliases: dict[str, str] | None = None) -> str:
    match = difflib.get_close_matches(word, sorted(choices), n=1, cutoff=0.6)
    guess = (aliases or {}).get(word.lower()) or (match[0] if match else None)
    return f" (did you mean '{guess}'?)" if guess else ""


# names other tools give LoRA settings, and what peft calls them
LORA_ALIASES = {"rank": "r", "lora_r": "r", "alpha": "lora_alpha", "dropout": "lora_dropout",
                "target": "target_modules", "targets": "target_modules", "modules": "target_modules",
                "lora_target_modules": "target_modules"}


@functools.cache
def _lora_field_type(key: str) -> tuple[Any, Any]:
    """peft LoraConfig's annotation of `key` and a pydantic adapter checking it (None: pydantic cannot)."""
    import typing

    from peft import LoraConfig
    from pydantic import TypeAdapter
    from pydantic.errors import PydanticUserError

    tp = typing.get_type_hints(LoraConfig)[key]
    try:
        return tp, TypeAdapter(tp)
    except PydanticUserError:  # an annotation pydantic cannot build a schema for: peft checks it
        return tp, None


def _type_name(tp: Any) -> str:
    """A type as a config reader knows it: `int`, `list of str or str`, `one of 'none', 'all'`."""
    import types
    import typing

    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is type(None):
        return "null"
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        # sorted: typing caches unions, so the order of their members depends on which spelling came first
        names = sorted(_type_name(a) for a in args if a is not type(None))
        return " or ".join(names + ["null"] * (type(None) in args))
    if origin in (list, tuple, set):
        return f"list of {_type_name(args[0])}" if args else "list"
    if origin is dict:
        return "mapping"
    return getattr(tp, "__name__", str(tp))


def _lora_value(key: str, value: Any) -> tuple[Any, str | None]:
    """`value` as peft LoraConfig's `key` takes it (its annotation, pydantic's lax mode: "0.1" -> 0.1), and why
    it cannot be (None: it can)."""
    if key == "init_lora_weights" and isinstance(value, str) and value.startswith("pissa_niter_"):
        return value, None  # peft's annotation spells this family as one placeholder string
    tp, adapter = _lora_field_type(key)
    if adapter is None:
        return value, None
    try:
        checked = adapter.validate_python(value)
    except ValidationError:
        return value, f"expected {_type_name(tp)} (got {value!r})"
    if key == "lora_dropout" and not 0 <= checked < 1:
        return value, f"expected a probability in [0, 1) (got {value!r})"
    if key == "r" and checked < 1:
        return value, f"expected a positive integer (got {value!r})"
    # a type pydantic builds (an enum, a set) stays as written: the config must dump back to YAML
    return (checked if type(checked) in (int, float, str, bool, list, dict, type(None)) else value), None


def _fields_at(model: type[BaseModel], loc: tuple) -> set[str]:
    """Field names of the sub-model reached by `loc` (for did-you-mean on unknown keys)."""
    current: Any = model
    for part in loc:
        if not (isinstance(current, type) and issubclass(current, BaseModel)) or part not in current.model_fields:
            return set()
        ann = current.model_fields[part].annotation
        current = next((a for a in getattr(ann, "__args__", (ann,)) if isinstance(a, type) and issubclass(a, BaseModel)), ann)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return set(current.model_fields)
    return set()


def _describe(err: dict, root: type[BaseModel]) -> str:
    loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p in _UNION_TAGS))
    key = ".".join(str(p) for p in loc) or "(top level)"
    etype = err["type"]
    if etype == "extra_forbidden":
        return f"{key}: unknown key{_did_you_mean(str(loc[-1]), _fields_at(root, loc[:-1]))}"
    if etype == "missing":
        return f"{key}: required but missing"
    msg = err["msg"].removeprefix("Value error, ")
    got = err.get("input")
    shown = "" if isinstance(got, (dict, list)) or got is None else f" (got {got!r})"
    return f"{key}: {msg}{shown}"


# pydantic puts union member names into error locations; they mean nothing to a user.
_UNION_TAGS = {"PromptFormatConfig", "str", "function-after[_slots(), PromptFormatConfig]"}


def _parse_scalar(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_overrides(data: dict, overrides: list[str] | tuple[str, ...] | dict[str, Any]) -> dict:
    """Return a copy of `data` with dotted overrides applied (`lora_config.r=16`, values parsed as YAML).

    Raises:
        ConfigError: an override is not of the form key=value.
    """
    import copy

    out = copy.deepcopy(data)
    items = overrides.items() if isinstance(overrides, dict) else []
    problems = []
    if not isinstance(overrides, dict):
        parsed = []
        for item in overrides:
            if "=" not in item:
                problems.append(f"override '{item}': expected key=value, e.g. learning_rate=2e-4")
                continue
            k, v = item.split("=", 1)
            parsed.append((k.strip(), _parse_scalar(v)))
        items = parsed
    if problems:
        raise ConfigError(problems, "command line")
    for key, value in items:
        node = out
        parts = key.split(".")
        for p in parts[:-1]:
            if not isinstance(node.get(p), dict):
                node[p] = {}
            node = node[p]
        node[parts[-1]] = value
    return out


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's SafeLoader, except that a mapping giving a key twice is an error naming both lines (PyYAML keeps
    the last one silently). Keys a merge (`<<: *base`) brings in may be overridden, as YAML intends."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            with contextlib.suppress(TypeError):  # an unhashable key: construct_mapping says so
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"key {key!r} is given twice, on lines {seen[key]} and {line} (the last would win "
                        "silently); keep one", key_node.start_mark)
                seen[key] = line
        return super().construct_mapping(node, deep)


def _read_yaml(path: Path) -> dict:
    from forgekit.errors import utf8_problem

    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ConfigError([f"cannot read config: {e.strerror}"], str(path)) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError([f"{path}:{utf8_problem(raw, e)}"], str(path)) from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader: no arbitrary objects
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ConfigError([f"{where}: invalid YAML: {getattr(e, 'problem', e)}"], str(path)) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError([f"{path}: expected a mapping of config keys, got {type(data).__name__}"], str(path))
    return data


def load_config(
    source: str | os.PathLike | dict | FinetuneConfig,
    overrides: list[str] | tuple[str, ...] | dict[str, Any] = (),
    default: bool = False,
) -> FinetuneConfig:
    """Load, override and validate a config.

    Args:
        source: a YAML path, a dict of config keys, or a loaded config (re-validated with the overrides; the
            values derived for it stay marked derived unless an override changes them).
        overrides: dotted `key=value` strings (command line) or a {dotted_key: value} dict.
        default: LLMForge's default mode: only `model_id` and `train_path` are required; LoRA rank 8 on all
            linear layers unless `lora_config` is given. (A loaded config keeps the mode it was loaded in.)

    Raises:
        ConfigError: every problem found, each with its dotted key.
    """
    name, derived, earlier_notes = None, set(), []
    if isinstance(source, FinetuneConfig):
        data, derived, default = source.model_dump(mode="json", exclude_unset=True), source.derived, False
        earlier_notes = source.notes
    elif isinstance(source, dict):
        data = dict(source)
    else:
        path = Path(source)
        name = str(path)
        from forgekit.shipped import resolve_config_paths

        # relative paths in the file: against its directory first (deepspeed.config_path also the shipped presets)
        data = resolve_config_paths(_read_yaml(path), path.parent)
    before, data = data, _expand_home(apply_overrides(data, overrides))
    derived -= {k for k in data if data[k] != before.get(k)}  # an overridden value is the user's, not derived
    data, notes, legacy_problems = _llmforge_only_keys(data)
    non_finite = _non_finite(data)
    legacy_problems += [f"{key}: expected a finite number (got {_dig(data, key)!r})" for key in non_finite]
    data, tracking_notes, tracking_problems = _silogen_tracking(data)
    from forgekit.silogen import silogen_sections

    data, silogen_problems = silogen_sections(data)  # the Silogen engine's other sections: the field to use
    tracking_problems = tracking_problems + silogen_problems
    notes, legacy_problems = notes + tracking_notes, legacy_problems + tracking_problems
    if default:
        user_lora = data.get("lora_config")
        if not user_lora:
            derived.add("lora_config")
        data["lora_config"] = {**DEFAULT_LORA, **(user_lora or {})}
    try:
        cfg = FinetuneConfig.model_validate(data)
    except ValidationError as e:
        errors = e.errors()
        # for `Model | str` unions, the str branch's complaint is noise when the model branch explains more
        model_branch = {err["loc"][: err["loc"].index("PromptFormatConfig")] for err in errors if "PromptFormatConfig" in err["loc"]}
        model_branch |= {err["loc"][: err["loc"].index("function-after[_slots(), PromptFormatConfig]")] for err in errors if "function-after[_slots(), PromptFormatConfig]" in err["loc"]}
        errors = [err for err in errors if not (err["loc"] and err["loc"][-1] == "str" and err["loc"][:-1] in model_branch)]
        # a non-finite value is reported once, above, whatever else its field says about it (here, and below
        # for a field's checks of its keys, as lora_config's)
        errors = [err for err in errors if ".".join(map(str, err["loc"])) not in non_finite]
        problems = []
        for err in errors:
            text = _describe(err, FinetuneConfig)
            key = ".".join(str(p) for p in err["loc"])
            if text.startswith(f"{key}: {key}"):  # a field's checks of its keys (lora_config): parts name them
                problems.extend(text.removeprefix(f"{key}: ").split(" | "))
            elif text.startswith("(top level)"):  # cross-field checks: one " | "-joined message
                problems.extend(text.split(" | "))
            else:
                problems.append(text)
        problems = [p.removeprefix("(top level): ") for p in problems]
        problems = [p for p in problems if not any(p.startswith(f"{k}: ") for k in non_finite)]
        if all(err["loc"] for err in errors):
            # pydantic skips the cross-field checks when a field is invalid; run them on the raw values too
            before = FinetuneConfig._task_from_classifier_config(data)  # what validation would have seen
            raw = FinetuneConfig.model_construct(**{k: v for k, v in before.items() if k in FinetuneConfig.model_fields})
            # TypeError/AttributeError: raw values too broken to compare; the field errors already say why
            with contextlib.suppress(TypeError, AttributeError):
                try:
                    FinetuneConfig._cross_field(raw)
                except ValueError as x:
                    problems.extend(str(x).split(" | "))
        raise ConfigError(legacy_problems + problems, name) from None
    if legacy_problems:
        raise ConfigError(legacy_problems, name)
    cfg._derived = derived
    cfg._notes = list(dict.fromkeys(earlier_notes + notes))  # a re-validated config notes a kept key once
    return cfg


def _dig(data: Any, dotted: str) -> Any:
    """The value at a dotted key of `_non_finite` (`a.b[2]`)."""
    for part in re.findall(r"[^.\[\]]+|\[\d+\]", dotted):
        data = data[int(part[1:-1])] if part.startswith("[") else data[part]
    return data


def _llmforge_only_keys(data: dict) -> tuple[dict, list[str], list[str]]:
    """LLMForge keys forgekit does not need, taken out of `data` (or translated): (data, notes, problems).

    So that an LLMForge YAML copied as it is validates: `dataset_size_scaling_factor` (an internal Ray Data setting
    of LLMForge's) is not used; `flash_attention_2: false` means `attn_implementation: sdpa` (true: forgekit picks
    FlashAttention kernels on GPUs itself); `checkpoint_every_n_epochs: N` (LLMForge's older key) means
    `checkpoint_and_evaluation_frequency: {unit: epochs, frequency: N}`; `preference_tuning_config` belongs to
    `task: preference_tuning` (and its `logprob_processor_scaling_config`'s Ray Data actors are noted as not used).
    """
    data, notes, problems = dict(data), [], []
    if "dataset_size_scaling_factor" in data:
        value = data.pop("dataset_size_scaling_factor")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            problems.append(f"dataset_size_scaling_factor: expected a number (got {value!r})")
        notes.append("dataset_size_scaling_factor: an internal Ray Data setting of LLMForge's; not used")
    if "flash_attention_2" in data:
        value = data.pop("flash_attention_2")
        if not isinstance(value, bool):
            problems.append(f"flash_attention_2: expected true or false (got {value!r})")
        elif not value and "attn_implementation" not in data:
            data["attn_implementation"] = "sdpa"
            notes.append("flash_attention_2: false -> attn_implementation: sdpa")
        else:
            notes.append("flash_attention_2: not used; attn_implementation chooses the attention kernels")
    if "checkpoint_every_n_epochs" in data:
        value = data.pop("checkpoint_every_n_epochs")
        if "checkpoint_and_evaluation_frequency" in data:
            problems.append("checkpoint_every_n_epochs: LLMForge's older form of checkpoint_and_evaluation_frequency;"
                            " give only one of them")
        elif isinstance(value, bool) or not isinstance(value, int) or value < 1:
            problems.append(f"checkpoint_every_n_epochs: expected a positive integer (got {value!r})")
        else:
            data["checkpoint_and_evaluation_frequency"] = {"unit": "epochs", "frequency": value}
            notes.append(f"checkpoint_every_n_epochs: {value} -> checkpoint_and_evaluation_frequency: "
                         f"{{unit: epochs, frequency: {value}}}")
    if data.get("preference_tuning_config") is not None and data.get("task") != "preference_tuning":
        data.pop("preference_tuning_config")
        problems.append(f"preference_tuning_config: belongs to task: preference_tuning (task is "
                        f"{data.get('task', 'instruction_tuning')})")
    scaling = (data.get("preference_tuning_config") or {}).get("logprob_processor_scaling_config") \
        if isinstance(data.get("preference_tuning_config"), dict) else None
    if isinstance(scaling, dict):
        unused = [k for k in ("custom_resources", "concurrency") if scaling.get(k)]
        if unused:
            notes.append(f"preference_tuning_config.logprob_processor_scaling_config: {', '.join(unused)} not used "
                         "(LLMForge's Ray Data actors; forgekit's training workers compute the reference log-probs "
                         "once before the first step, cached beside the tokenized data)")
        if scaling.get("batch_size"):
            notes.append(f"preference_tuning_config.logprob_processor_scaling_config.batch_size: "
                         f"{scaling['batch_size']} -> pairs per reference forward pass (TRL's precompute_ref_batch_size)")
    _more_llmforge_keys(data, notes, problems)
    return data, notes, problems


# the GPU type an Anyscale accelerator shape names (`anyscale/accelerator_shape:4xA10G` -> A10G)
_SHAPE_GPU = re.compile(r"anyscale/accelerator_shape:(?:\d+x)?(.+)")


def _more_llmforge_keys(data: dict, notes: list[str], problems: list[str]) -> None:
    """The rest of LLMForge's keys, handled in place (see `_llmforge_only_keys`).

    `no_gradient_checkpoint` (older, negated spelling) and `max_num_checkpoints` translate to
    `gradient_checkpointing` and `num_checkpoints_to_keep`; `num_data_blocks_per_device` (Ray Data streaming) is not
    used, nor `embedding_scaling_technique: linear` (what forgekit does past the model's maximum; other techniques
    are rope_scaling); MLflow's `create_experiment_if_not_exists: true` is what transformers' callback does anyway;
    `anyscale/accelerator_shape:*` worker resources are an error off Anyscale (Ray would wait for them forever);
    `trainer_resources` is noted as unused.
    """
    if "no_gradient_checkpoint" in data:
        value = data.pop("no_gradient_checkpoint")
        if not isinstance(value, bool):
            problems.append(f"no_gradient_checkpoint: expected true or false (got {value!r})")
        elif data.get("gradient_checkpointing") is value:
            problems.append(f"no_gradient_checkpoint: {str(value).lower()} contradicts gradient_checkpointing: "
                            f"{str(value).lower()} (LLMForge's older, negated spelling of it); give only "
                            "gradient_checkpointing")
        else:
            data["gradient_checkpointing"] = not value
            notes.append(f"no_gradient_checkpoint: {str(value).lower()} -> gradient_checkpointing: "
                         f"{str(not value).lower()}")
    if "max_num_checkpoints" in data:
        value = data.pop("max_num_checkpoints")
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            problems.append(f"max_num_checkpoints: expected a positive integer (got {value!r})")
        elif "num_checkpoints_to_keep" in data and data["num_checkpoints_to_keep"] != value:
            problems.append(f"max_num_checkpoints: {value} contradicts num_checkpoints_to_keep: "
                            f"{data['num_checkpoints_to_keep']} (LLMForge's other name for it); give only one")
        else:
            data["num_checkpoints_to_keep"] = value
            notes.append(f"max_num_checkpoints: {value} -> num_checkpoints_to_keep: {value}")
    if "num_data_blocks_per_device" in data:
        value = data.pop("num_data_blocks_per_device")
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            problems.append(f"num_data_blocks_per_device: expected a positive integer (got {value!r})")
        notes.append("num_data_blocks_per_device: LLMForge's Ray Data streaming setting; not used (forgekit tokenizes "
                     "once on the driver and each worker reads the cached rows)")
    if "embedding_scaling_technique" in data:
        value = data.pop("embedding_scaling_technique")
        if value in (None, "linear"):
            notes.append(f"embedding_scaling_technique: {value or 'null'}: not used; past the model's maximum "
                         "context forgekit scales RoPE linearly (rope_scaling chooses another way)")
        else:
            problems.append(f"embedding_scaling_technique: {value!r} is not supported; set rope_scaling to "
                            "transformers' RoPE parameters instead, e.g. {rope_type: dynamic, factor: 2.0} "
                            "(unset, forgekit scales linearly past the model's maximum context)")
    logger = data.get("logger")
    provider_config = logger.get("provider_config") if isinstance(logger, dict) else None
    if isinstance(provider_config, dict) and "create_experiment_if_not_exists" in provider_config:
        rest = {k: v for k, v in provider_config.items() if k != "create_experiment_if_not_exists"}
        value = provider_config["create_experiment_if_not_exists"]
        data["logger"] = {**logger, "provider_config": rest}
        key = "logger.provider_config.create_experiment_if_not_exists"
        if logger.get("provider") != "mlflow":
            problems.append(f"{key}: an MLflow setting, but logger.provider is {logger.get('provider')!r}")
        elif value is True:
            notes.append(f"{key}: true: what happens anyway (transformers' MLflow callback creates a missing "
                         "experiment_name, with mlflow.set_experiment)")
        elif value is False:
            problems.append(f"{key}: false cannot be followed: transformers' MLflow callback creates a missing "
                            "experiment (mlflow.set_experiment); create the experiment first and remove the key")
        else:
            problems.append(f"{key}: expected true or false (got {value!r})")
    resources = data.get("worker_resources")
    if isinstance(resources, dict) and not os.environ.get("ANYSCALE_CLUSTER_ID"):
        for name in resources:
            shape = _SHAPE_GPU.fullmatch(str(name))
            if str(name).startswith("anyscale/"):
                instead = f"accelerator_type:{shape[1]}" if shape else "Ray's own resources (accelerator_type:<GPU>)"
                problems.append(f"worker_resources.{name}: an Anyscale resource, and this is not an Anyscale cluster "
                                f"($ANYSCALE_CLUSTER_ID is unset): Ray would wait for it forever. Remove it, or ask "
                                f"for the GPU type with {instead}")
    if data.get("trainer_resources"):
        notes.append("trainer_resources: not used (Ray Train 2.60 reserves no resources for its controller); the "
                     "workers' resources are worker_resources")


SILOGEN_TRACKING = {"mlflow_server_uri": "tracking_uri", "experiment_name": "experiment_name",
                    "hf_mlflow_log_artifacts": "hf_mlflow_log_artifacts"}


def _silogen_tracking(data: dict) -> tuple[dict, list[str], list[str]]:
    """The Silogen engine's `tracking:` section as the `logger` section it means: (data, notes, problems).

    `tracking: {mlflow_server_uri, experiment_name, hf_mlflow_log_artifacts}` is `logger: {provider: mlflow,
    provider_config: {tracking_uri, experiment_name, hf_mlflow_log_artifacts}}`. An empty `mlflow_server_uri` means,
    as in Silogen, that the config does not set up MLflow: the environment's `MLFLOW_*` variables decide.
    """
    if "tracking" not in data:
        return data, [], []
    data, tracking = dict(data), data["tracking"]
    data.pop("tracking")
    if tracking is None:
        tracking = {}
    if not isinstance(tracking, dict):
        return data, [], [f"tracking: expected a mapping of {', '.join(SILOGEN_TRACKING)} (got {tracking!r})"]
    problems = [f"tracking.{k}: unknown key{_did_you_mean(k, set(SILOGEN_TRACKING))}"
                for k in tracking if k not in SILOGEN_TRACKING]
    if "logger" in data:
        problems.append("tracking: Silogen's form of the logger section; give only one of them")
    if problems:
        return data, [], problems
    if not tracking.get("mlflow_server_uri"):
        return data, ["tracking: no mlflow_server_uri, so the config sets up no MLflow tracking (the "
                      "environment's MLFLOW_* variables decide)"], []
    settings = {SILOGEN_TRACKING[k]: v for k, v in tracking.items() if v is not None and v != ""}
    data["logger"] = {"provider": "mlflow", "provider_config": settings}
    shown = ", ".join(f"{k}: {v}" for k, v in settings.items())
    return data, [f"tracking: -> logger: {{provider: mlflow, provider_config: {{{shown}}}}}"], []


def with_derived(cfg: FinetuneConfig, **values: Any) -> FinetuneConfig:
    """A copy of `cfg` with `values` filled in and recorded as derived."""
    new = cfg.model_copy(update=values)
    new._derived = cfg.derived | set(values)
    FinetuneConfig.model_validate(new.model_dump())  # derived values obey the schema too
    return new


# values left to the workers, which know their device (result.json's `levers` records what they chose)
# values each worker settles for its device: {key: (the values it settles, what they become)}
DECIDED_ON_WORKER = {
    "use_gpu": ((None,), "GPUs when the Ray cluster has them"),
    "pad_to_multiple_of": ((None,), "64 on CPU workers, 1 on GPUs"),
    "gradient_checkpointing": ((True,), "every layer on CPUs; on GPUs as many layers as memory needs (maybe none)"),
    "attn_implementation": (("auto",), "varlen FlashAttention on CUDA GPUs, sdpa on CPU"),
    "precision": (("auto",), "bf16 on GPUs that support it; on CPUs bf16 autocast with AMX / AVX512-BF16, else fp32"),
}


def format_config(cfg: FinetuneConfig) -> str:
    """The config as YAML, every value shown; derived values marked `# derived`, values the workers settle
    (`DECIDED_ON_WORKER`, `liger_kernel.enabled`) marked with what they will be."""
    data = cfg.model_dump(mode="json")
    if data.get("logger"):  # shown by `validate` and saved as config.yaml: credentials never (forgekit.tracking)
        data["logger"] = mask_secrets(data["logger"])
    lines = [f"# LLMForge key {note}" for note in cfg.notes]
    for key, value in data.items():
        mark = "  # derived" if key in cfg.derived else ""
        settled, becomes = DECIDED_ON_WORKER.get(key, ((), ""))
        if any(value is v for v in settled):
            mark = f"  # on each worker: {becomes}"
        if key == "liger_kernel" and value.get("enabled") is None:
            mark = "  # enabled on each worker: on GPUs when liger-kernel is installed"
        if isinstance(value, dict) and value:
            lines.append(f"{key}:{mark}")
            body = yaml.safe_dump(value, sort_keys=False, default_flow_style=False).rstrip("\n")
            lines.extend("  " + line for line in body.splitlines())
        else:
            scalar = yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()
            lines.append(f"{key}: {scalar}{mark}")
    return "\n".join(lines) + "\n"
