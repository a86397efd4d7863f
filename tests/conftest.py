"""Test-wide JAX setup: 8 fake CPU devices and rank promotion that raises.

XLA_FLAGS must be set before jax is first imported, which is why this runs at conftest import.
"""

import os
import sys

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Every compile of the session (in-process and in the many `gptjax train` subprocesses) goes to
# one persistent cache, so a config compiled once is loaded afterwards: it halves most runs.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(os.environ.get("GPTJAX_CACHE_DIR", "/tmp"),
                                                                "jax-test-cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
# The TPU compiler that scripts/setup.sh installs beside the environment, for the TPU-topology
# plans (jax reads TPU_LIBRARY_PATH where no libtpu module is installed).
_LIBTPU = os.path.join(sys.prefix, "tpu-compiler", "libtpu", "libtpu.so")
if os.path.isfile(_LIBTPU):
    os.environ.setdefault("TPU_LIBRARY_PATH", _LIBTPU)

import pathlib  # noqa: E402

import jax  # noqa: E402
import pytest  # noqa: E402
import yaml  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")

SHARED = pathlib.Path(__file__).resolve().parents[1].parent / "shared"
# Offline copies of the corpus and the BPE ranks, when the checkout sits beside shared/.
if SHARED.is_dir():
    os.environ.setdefault("GPTJAX_DATA_DIR", str(SHARED / "data"))
    os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(SHARED / "tiktoken"))


@pytest.fixture(scope="session")
def shared_dir() -> pathlib.Path:
    """../shared beside the checkout (data corpora and the tiktoken cache used offline)."""
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} is missing: tests that need corpora run beside the shared folder")
    return SHARED


@pytest.fixture(scope="module")
def config_file(request, tmp_path_factory) -> pathlib.Path:
    """The test module's TINY run config (its own steps and cadence) as a YAML file."""
    path = tmp_path_factory.mktemp("cfg") / "tiny.yaml"
    path.write_text(yaml.safe_dump(request.module.TINY))
    return path


@pytest.fixture(scope="module")
def hf_dir(request, tmp_path_factory) -> pathlib.Path:
    """A random GPT-2 saved as transformers saves it, with a byte-level BPE trained on the test
    module's HF_TEXT; HF_OPTIONS (positions, init, ...) are the module's (helpers.save_hf_gpt2)."""
    from helpers import save_hf_gpt2

    return save_hf_gpt2(tmp_path_factory.mktemp("hf") / "gpt2", request.module.HF_TEXT,
                        **getattr(request.module, "HF_OPTIONS", {}))


def pytest_collection_modifyitems(items):
    # hf_dir saves a transformers model, so a test that asks for it needs the PyTorch stack.
    for item in items:
        if "hf_dir" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.torch)


@pytest.fixture(autouse=True)
def _torch_mark(request):
    import helpers

    helpers.IN_TORCH_TEST = request.node.get_closest_marker("torch") is not None
    yield
    helpers.IN_TORCH_TEST = None


@pytest.fixture(scope="session")
def object_store_servers(tmp_path_factory):
    """The local S3 and GCS servers, one pair per pytest worker for the whole session: they point
    the process's environment at themselves, so two pairs in one worker would step on each other
    (modules that use them share the xdist group "object_store")."""
    import object_store
    from helpers import unavailable

    unavailable(object_store.unavailable(), "GPTJAX_REQUIRE_OBJECT_STORE", "the servers cannot start",
                "SKIPPING OBJECT-STORE TESTS")
    servers = object_store.Servers(tmp_path_factory.mktemp("servers"))
    yield servers
    servers.stop()
