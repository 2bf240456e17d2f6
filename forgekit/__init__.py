"""forgekit: fine-tune open-weight LLMs from a YAML file, on Ray Train + DeepSpeed."""

import logging

__version__ = "0.1.0"

# bitsandbytes (the quant extra; peft imports it wherever it is installed) warns at import, on CPUs with AVX512-BF16,
# that an optional kernel from the Hugging Face Hub is missing: its own CPU kernels run without it (forgekit.quantization)
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
