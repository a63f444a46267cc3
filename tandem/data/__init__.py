"""The datasets drawn from the built-in tasks (`tandem.tasks`, re-exported here), user data files, chat
templating, reward functions, and the records the offline jobs train on."""

from tandem.data.chat import as_messages, prompt_ids, prompt_text, response_ids
from tandem.data.files import load_data_file
from tandem.data.rewards import evens_reward, load_reward_fn, sort_reward, task_reward
from tandem.data.synthetic import preference_pairs, rl_prompts, sft_examples
from tandem.tasks import Task, get_task, register_task, task_names

__all__ = [
    "Task",
    "as_messages",
    "evens_reward",
    "get_task",
    "load_data_file",
    "load_reward_fn",
    "preference_pairs",
    "prompt_ids",
    "prompt_text",
    "register_task",
    "response_ids",
    "rl_prompts",
    "sft_examples",
    "sort_reward",
    "task_names",
    "task_reward",
]
