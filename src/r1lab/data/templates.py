"""Prompt templates: the R1-Zero template of the paper, the model's own chat template, or plain.

The response always follows the prompt as a separate token sequence (prompt and response are
tokenized apart and concatenated), so a template never changes how the response is tokenized.
"""

from __future__ import annotations

# DeepSeek-R1 (arXiv 2501.12948), Table 1, verbatim.
R1_ZERO_TEMPLATE = (
    "A conversation between User and Assistant. The user asks a question, and the Assistant solves it. "
    "The assistant first thinks about the reasoning process in the mind and then provides the user with "
    "the answer. The reasoning process and answer are enclosed within <think> </think> and <answer> "
    "</answer> tags, respectively, i.e., <think> reasoning process here </think> <answer> answer here "
    "</answer>. User: {prompt}. Assistant:"
)

# The system prompt used with chat templates: the same instruction, addressed to a chat model.
R1_SYSTEM_PROMPT = (
    "The assistant first thinks about the reasoning process and then provides the answer. The reasoning "
    "process and answer are enclosed within <think> </think> and <answer> </answer> tags, respectively."
)

TEMPLATES = ("r1_zero", "chat", "plain")


def render_prompt(prompt: str, template: str, tokenizer=None, system_prompt: str | None = None) -> str:
    """The text the model sees before its response.

    ``r1_zero``: the paper's template; ``chat``: the tokenizer's chat template (with the R1 system
    prompt unless ``system_prompt`` is "" ), ending with the generation prompt; ``plain``: the prompt
    followed by a space.
    """
    if template == "r1_zero":
        return R1_ZERO_TEMPLATE.format(prompt=prompt)
    if template == "plain":
        return f"{prompt} " if prompt else ""
    if template == "chat":
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise ValueError("data.template=chat needs a tokenizer with a chat template")
        system = R1_SYSTEM_PROMPT if system_prompt is None else system_prompt
        messages = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": prompt}
        ]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    raise ValueError(f"data.template: unknown template {template!r} (use one of {TEMPLATES})")
