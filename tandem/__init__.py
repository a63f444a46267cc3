"""tandem: distributed RLHF on Ray, vLLM and DeepSpeed."""
