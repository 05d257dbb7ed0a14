"""Running tests on 8 simulated CPU devices: a test that needs them runs its module's sharded tests
in a subprocess with ``XLA_FLAGS=--xla_force_host_platform_device_count=8`` (the device count is
fixed when JAX starts)."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")


def run_pytest(test_file: str, keyword: str, passed: int) -> None:
    """Runs the tests of ``test_file`` selected by ``keyword`` on 8 devices; asserts that ``passed`` passed."""
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test_file, "-k", keyword],
                            env=ENV, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert result.returncode == 0 and f"{passed} passed" in result.stdout, \
        result.stdout[-3000:] + result.stderr[-2000:]
