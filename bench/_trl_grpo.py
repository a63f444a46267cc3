"""TRL's `GRPOTrainer` on the side-by-side bench's job, in this one process (HF generate, fp32, CPU):
what `bench/side_by_side.py` runs as a subprocess and compares tandem against.

Same job as tandem's side: the built-in sort task's training prompts (`rl_prompts("sort", 2048)`,
as `data.task: sort` draws them), the bench reward (`_sbs_reward.partial_sort`, as tandem's side), 16 prompts x 4
generations a step, temperature 1.0, beta (KL coefficient) 0.04, lr 1e-4 constant, one
iteration and no gradient accumulation, seed 0. A step's wall time is the interval between
consecutive `on_step_end` callbacks (the first from `on_train_begin`).

usage: python bench/_trl_grpo.py --model DIR --steps N --max-completion-length L --out RESULT.json
Needs trl and accelerate importable, and tandem (the repository on PYTHONPATH).
"""

from __future__ import annotations

import argparse
import json
import os
import time

SAMPLES_PER_PROMPT = 4


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--steps", type=int, required=True)
    ap.add_argument("--max-completion-length", type=int, required=True)
    ap.add_argument("--prompts", type=int, default=16, help="prompts per step (x 4 generations)")
    ap.add_argument("--num-prompts", type=int, default=2048, help="size of the prompt set")
    ap.add_argument("--out", required=True, help="JSON file the result is written to")
    return ap.parse_args()


def text_of(x: str | list[dict]) -> str:
    """TRL hands conversational prompts and completions over as message lists."""
    return x[-1]["content"] if isinstance(x, list) else x


def main() -> None:
    args = parse_args()
    import torch
    import transformers
    import trl
    from _sbs_reward import partial_sort as reward_fn
    from datasets import Dataset
    from transformers import AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from tandem.data import prompt_text, rl_prompts

    def sort_reward(prompts, completions, **kwargs):
        return reward_fn([prompt_text(p) for p in prompts], [text_of(c) for c in completions])

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.ends: list[float] = []
            self.lengths: list[float] = []

        def on_train_begin(self, args, state, control, **kw):
            self.ends.append(time.perf_counter())

        def on_step_end(self, args, state, control, **kw):
            self.ends.append(time.perf_counter())

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "completions/mean_length" in logs:
                self.lengths.append(float(logs["completions/mean_length"]))

    prompts = rl_prompts("sort", args.num_prompts, seed=0)
    dataset = Dataset.from_list([{"prompt": [{"role": "user", "content": p}]} for p in prompts])
    cfg = GRPOConfig(
        output_dir=os.path.join(os.path.dirname(os.path.abspath(args.out)), "trl-out"),
        per_device_train_batch_size=args.prompts * SAMPLES_PER_PROMPT,  # counted in completions
        num_generations=SAMPLES_PER_PROMPT,
        max_completion_length=args.max_completion_length,
        temperature=1.0,
        beta=0.04,
        learning_rate=1e-4,
        lr_scheduler_type="constant",
        num_iterations=1,
        gradient_accumulation_steps=1,
        max_steps=args.steps,
        bf16=False,
        fp16=False,
        use_cpu=True,
        seed=0,
        report_to="none",
        save_strategy="no",
        logging_steps=1,
        model_init_kwargs={"dtype": torch.float32},
    )
    timer = StepTimer()
    trainer = GRPOTrainer(
        model=args.model,
        reward_funcs=sort_reward,
        args=cfg,
        train_dataset=dataset,
        processing_class=AutoTokenizer.from_pretrained(args.model),
        callbacks=[timer],
    )
    trainer.train()
    result = {
        "step_s": [b - a for a, b in zip(timer.ends, timer.ends[1:])],
        "completion_length": timer.lengths,
        "trl": trl.__version__,
        "transformers": transformers.__version__,
        "torch_threads": torch.get_num_threads(),
    }
    with open(args.out, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main()
