"""Fixtures shared by the trainer tests."""

import pytest
import ray


@pytest.fixture(scope="module")
def ray_local():
    """A local Ray on loopback for one test module (tests/conftest.py keeps ports on 127.0.0.1)."""
    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=4, include_dashboard=False)
    yield
    ray.shutdown()
