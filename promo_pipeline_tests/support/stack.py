"""Tear-down of a whole local stack, for tests and benchmarks that make throwaway ones."""

from __future__ import annotations

import shutil

from promo_pipeline.stack import LocalStack


def destroy(stack: LocalStack) -> None:
    """down() and delete the stack's dir with all its data."""
    try:
        stack.down()
    finally:
        shutil.rmtree(stack.dir, ignore_errors=True)
