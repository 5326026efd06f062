"""Rule-based rewards of DeepSeek-R1 (arXiv 2501.12948, §2.2.2 and §2.3.2).

Every reward is a pure function ``(prompt, completion, reference) -> float`` that never raises on
any completion; RewardSet adds them up with weights. REWARDS maps the short names a config may use.
The exception is the machine, not the completion: the code rewards ("code", and "accuracy" on a
code task) raise SandboxUnavailable where the kernel cannot contain programs, unless
R1LAB_SANDBOX_ALLOW_UNSAFE=1 is set (docs/sandbox.md).
"""

from r1lab.rewards.accuracy import accuracy_reward, accuracy_reward_math, extract_answer
from r1lab.rewards.code import code_reward, run_sandboxed
from r1lab.rewards.compose import RewardFunction, RewardSet
from r1lab.rewards.format import format_reward_lenient, format_reward_strict, has_format
from r1lab.rewards.language import language_consistency, language_consistency_reward
from r1lab.rewards.reasoning_gym import reasoning_gym_accuracy, reasoning_gym_reward

REWARDS = {
    "accuracy": accuracy_reward,
    "accuracy_math": accuracy_reward_math,
    "format": format_reward_strict,
    "format_lenient": format_reward_lenient,
    "language": language_consistency_reward,
    "code": code_reward,
    "reasoning_gym": reasoning_gym_accuracy,
    "reasoning_gym_score": reasoning_gym_reward,
}

__all__ = [
    "REWARDS",
    "RewardFunction",
    "RewardSet",
    "accuracy_reward",
    "accuracy_reward_math",
    "code_reward",
    "extract_answer",
    "format_reward_lenient",
    "format_reward_strict",
    "has_format",
    "language_consistency",
    "language_consistency_reward",
    "reasoning_gym_accuracy",
    "reasoning_gym_reward",
    "run_sandboxed",
]
