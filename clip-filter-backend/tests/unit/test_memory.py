"""glibc malloc tuning: applied on glibc unless the user set the variables, a no-op elsewhere."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

CALL = "from clip_filter.core.memory import tune_malloc; print(tune_malloc())"


def run_with(env_extra: dict[str, str]) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("MALLOC_ARENA_MAX", "MALLOC_MMAP_THRESHOLD_")}
    env.update(env_extra)
    return subprocess.run([sys.executable, "-c", CALL], env=env, capture_output=True, text=True, check=True).stdout.strip()


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt tuning is glibc-only")
def test_tuning_is_applied_on_glibc():
    assert run_with({}) == "True"


def test_variables_set_by_the_user_win():
    assert run_with({"MALLOC_ARENA_MAX": "4", "MALLOC_MMAP_THRESHOLD_": "65536"}) == "False"
