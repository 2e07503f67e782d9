"""Benchmarks for codestral-ls: suggestion quality (HumanEval infilling) and typing replay latency.

Run from the repository root: `python -m benchmarks.quality ...`, `python -m benchmarks.typing_replay ...`.
See benchmarks/README.md for the commands behind every published number.
"""
