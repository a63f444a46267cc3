"""Entry scripts, each a readable sequence of named stages: generate, sft, rm, dpo, ppo."""
