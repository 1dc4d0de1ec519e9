"""The stock vLLM server of the demo teacher, started once for every test of this folder that needs it."""

import pytest
from teacher_servers import VllmServer


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    """Its URL; the tests that take it skip without vLLM (`bash scripts/install_vllm.sh`, `pytest -m vllm`)."""
    pytest.importorskip("vllm")
    vllm = VllmServer(tmp_path_factory.mktemp("vllm_server") / "server.log")
    try:
        try:
            url = vllm.wait()
        except RuntimeError as err:
            pytest.fail(str(err))
        yield url
    finally:
        vllm.stop()
