"""Benchmarks of the book's model path: ``python -m bench.gpu`` (the Qwen2-Audio-7B architecture with random
weights on a CUDA GPU) and ``python -m bench.cpu`` (the tiny model and the baselines on this machine).

Results and how to read them: ``BENCHMARKS.md``; the floors, predictions and outcomes: ``bench/NOTES.md``.
"""
