"""The tiny world: procedurally generated, verifiable tasks that a few-layer transformer can learn on a
CPU in minutes, so every stage of the pipeline can show its real effect without a download."""

from r1lab.data.tinyworld.arithmetic import generate_arithmetic_task
from r1lab.data.tinyworld.world import TinyWorld, base_corpus_document

__all__ = ["TinyWorld", "base_corpus_document", "generate_arithmetic_task"]
