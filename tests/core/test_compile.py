"""Compile core: ONNX export identity and dynamic batch on a PilotNet; the AI Hub path through the real qai_hub
client against a loopback stand-in of the REST API (tests/support/aihub_standin.py). The real AI Hub service
was not reached: these machines have no route to it and no token."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from ad_core.compile import onnx_export, qaihub
from ad_core.compile.parity import ort_predictor, ort_session, torch_predictor
from ad_core.train.model import PilotNet
from tests.support.aihub_standin import BUCKET, INFERENCE_US, aihub_standin


@pytest.fixture(scope="module")
def pilotnet_onnx(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, PilotNet]:
    torch.manual_seed(0)
    model = PilotNet(target_mean=1.5, target_scale=20.0).eval()
    example = np.random.default_rng(0).random((2, 3, 66, 200), dtype=np.float32)
    program = torch.export.export(model, (torch.from_numpy(example),), dynamic_shapes=({0: torch.export.Dim("batch")},))
    out = tmp_path_factory.mktemp("onnx")
    first = onnx_export.export(program, out / "a.onnx", example)
    second = onnx_export.export(program, out / "b.onnx", example)
    assert first.sha256 == second.sha256 == hashlib.sha256((out / "b.onnx").read_bytes()).hexdigest()
    return first.path, model


@pytest.mark.parametrize("batch", [1, 3, 9])
def test_onnx_engine_answers_like_torch_at_batch_sizes_other_than_the_export_example(
    pilotnet_onnx: tuple[Path, PilotNet], batch: int
) -> None:
    path, model = pilotnet_onnx
    x = np.random.default_rng(batch).random((batch, 3, 66, 200), dtype=np.float32)
    ort_out, torch_out = ort_predictor(ort_session(path))(x), torch_predictor(model)(x)
    assert ort_out.shape == (batch,)
    assert np.abs(ort_out - torch_out).max() < 1e-4


def test_aihub_compile_and_profile_through_the_real_client_against_the_loopback_standin(
    pilotnet_onnx: tuple[Path, PilotNet], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, _ = pilotnet_onnx
    with aihub_standin(device="SA8775P ADP") as hub:
        monkeypatch.setenv(qaihub.TOKEN_ENV, hub.token)
        config = qaihub.client_config(hub.url)
        result = qaihub.compile_and_profile(
            config, path, tmp_path, device="SA8775P ADP", input_shape=(1, 3, 66, 200), log=lambda _m: None
        )
        # What the client uploaded is exactly our engine; what it downloaded is what the stand-in compiled.
        uploaded = hub.s3.get_object(Bucket=BUCKET, Key="models/m0000001")["Body"].read()
        assert hashlib.sha256(uploaded).hexdigest() == hashlib.sha256(path.read_bytes()).hexdigest()
        compiled = hub.jobs[result.compile_job_id].compile_job
        assert compiled.device.name == "SA8775P ADP" and "--target_runtime qnn_context_binary" in compiled.options
        assert [s.name for s in compiled.tensor_type_list.types] == ["frames"]
        assert result.path.read_bytes().endswith(hashlib.sha256(uploaded).digest())
        assert result.sha256 == hashlib.sha256(result.path.read_bytes()).hexdigest()
        assert result.inference_ms == INFERENCE_US / 1000 and result.peak_memory_mib == 12.0
        paths = [p for _m, p in hub.requests]
        assert "/api/v1/models/m0000001/multipart_upload" in paths and "/api/v1/jobs" in paths
        assert any(p.endswith("/result") for p in paths) and not hub.errors
        # A wrong token is refused by the stand-in as AI Hub would (401), named by the client.
        monkeypatch.setenv(qaihub.TOKEN_ENV, "wrong")
        with pytest.raises(Exception, match=r"(?i)token|auth"):
            qaihub.compile_and_profile(
                qaihub.client_config(hub.url), path, tmp_path / "x", device="SA8775P ADP", input_shape=(1, 3, 66, 200)
            )


def test_no_token_fails_before_any_request(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(qaihub.TOKEN_ENV, raising=False)
    monkeypatch.setenv("QAIHUB_CLIENT_INI", str(tmp_path / "absent.ini"))
    with pytest.raises(qaihub.NoToken, match="QAIHUB_API_TOKEN"):
        qaihub.client_config("http://127.0.0.1:9")
    ini = tmp_path / "client.ini"
    ini.write_text("[api]\napi_token = from-ini\napi_url = http://127.0.0.1:9\n")
    monkeypatch.setenv("QAIHUB_CLIENT_INI", str(ini))
    config = qaihub.client_config()
    assert config.api_token == "from-ini" and config.api_url == "http://127.0.0.1:9"
