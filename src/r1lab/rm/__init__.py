"""Reward models: Bradley–Terry math, the scalar-head network, the neural reward inside GRPO, and the
iterative RL loop of DeepSeekMath (Algorithm 1) that retrains it; the process reward model that scores
every step (``r1lab.rm.process``)."""

from r1lab.rm.losses import bradley_terry_loss
from r1lab.rm.model import build_reward_model, last_token_index, sequence_rewards
from r1lab.rm.process import ProcessReward
from r1lab.rm.scorer import NeuralReward, RewardStateCheckpoint, RunningMoments

__all__ = [
    "NeuralReward",
    "ProcessReward",
    "RewardStateCheckpoint",
    "RunningMoments",
    "bradley_terry_loss",
    "build_reward_model",
    "last_token_index",
    "sequence_rewards",
]
