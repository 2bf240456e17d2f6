"""forgekit: fine-tune open-weight LLMs from a YAML file, on Ray Train + DeepSpeed."""

__version__ = "0.1.0"
