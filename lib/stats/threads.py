"""BLAS limited to one thread around the statistics' many tiny matrix problems."""
from __future__ import annotations

import functools
from typing import Any, Callable, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


def one_blas_thread(func: F) -> F:
    """Run ``func`` with BLAS limited to one thread: its matrices are tiny, and on a busy 2-core machine
    OpenBLAS's thread hand-offs made each small L-BFGS-B fit many times slower (BENCHMARKS.md)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=1, user_api="blas"):
            return func(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
