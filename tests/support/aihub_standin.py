"""A loopback stand-in of the Qualcomm AI Hub REST API, enough for the ``qai_hub`` client's compile -> profile ->
download path: protobuf bodies (``qai_hub.public_api_pb2``) on the paths ``qai_hub/public_rest_api.py`` calls,
model uploads and downloads through presigned URLs of a real S3-compatible server (moto) on loopback.

It is a stand-in, not AI Hub: the "compiled model" is a deterministic blob derived from the uploaded bytes and
the device, and the profile's figures are fixed. Every request is recorded (``requests``), so tests can assert
what the client actually sent. The real service was never reached from these machines.
"""

from __future__ import annotations

import hashlib
import itertools
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

import boto3
import qai_hub.public_api_pb2 as pb
from moto.server import ThreadedMotoServer

PROTOBUF = "application/x-protobuf"
BUCKET = "aihub-standin"
INFERENCE_US = 1234  # the profile's estimated inference time (microseconds)
PEAK_BYTES = 12 << 20


@dataclass
class StandIn:
    url: str
    token: str
    device: str
    s3: Any
    requests: list[tuple[str, str]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    models: dict[str, dict[str, Any]] = field(default_factory=dict)
    jobs: dict[str, pb.Job] = field(default_factory=dict)
    ids: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    def new_id(self, prefix: str) -> str:
        return f"{prefix}{next(self.ids):07d}"

    def download_url(self, key: str) -> str:
        return self.s3.generate_presigned_url("get_object", Params={"Bucket": BUCKET, "Key": key}, ExpiresIn=600)


def _device(name: str) -> pb.Device:
    return pb.Device(name=name, os="1.0", attributes=["framework:qnn", "chipset:qualcomm-sa8775p", "format:auto"])


class _Handler(BaseHTTPRequestHandler):
    hub: StandIn

    def log_message(self, *args: object) -> None:  # quiet
        pass

    def _send(self, message: Any | None, status: int = 200, text: str = "") -> None:
        body = message.SerializeToString() if message is not None else text.encode()
        self.send_response(status)
        self.send_header("Content-Type", PROTOBUF if message is not None else "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _route(self, method: str) -> None:
        hub = self.hub
        parsed = urlparse(self.path)
        path = parsed.path.rstrip("/")
        hub.requests.append((method, path))
        if self.headers.get("Authorization") != f"token {hub.token}":
            self._send(None, 401, "invalid token")
            return
        m = re.fullmatch(r"/api/v1/(.*)", path)
        route = m.group(1) if m else ""
        query = parse_qs(parsed.query)
        body = self._body() if method in ("POST", "PATCH", "PUT") else b""
        if method == "GET" and route == "users/auth/user":
            self._send(pb.User(id=1, first_name="stand", last_name="in", email="standin@example.invalid"))
        elif method == "GET" and route == "devices":
            self._send(pb.DeviceList(devices=[_device(hub.device)], total_query_count=1))
        elif method == "POST" and route == "models":
            model = pb.Model()
            model.ParseFromString(body)
            mid = hub.new_id("m")
            hub.models[mid] = {"pb": model, "key": f"models/{mid}"}
            self._send(pb.CreateUpdateResponse(id=mid))
        elif method == "GET" and (m := re.fullmatch(r"models/(\w+)/multipart_upload", route)):
            mid = m.group(1)
            upload = hub.s3.create_multipart_upload(Bucket=BUCKET, Key=hub.models[mid]["key"])
            url = hub.s3.generate_presigned_url(
                "upload_part",
                Params={
                    "Bucket": BUCKET,
                    "Key": hub.models[mid]["key"],
                    "UploadId": upload["UploadId"],
                    "PartNumber": 1,
                },
                ExpiresIn=600,
            )
            size = int(query.get("file_size", ["0"])[0])
            self._send(
                pb.FileUploadResponse(
                    multipart_url=pb.FileMultipartUploadURL(
                        urls=[url], upload_id=upload["UploadId"], max_part_size=max(size, 1)
                    )
                )
            )
        elif method == "POST" and (m := re.fullmatch(r"models/(\w+)/multipart_upload", route)):
            mid = m.group(1)
            done = pb.FileMultipartUploadComplete()
            done.ParseFromString(body)
            hub.s3.complete_multipart_upload(
                Bucket=BUCKET,
                Key=hub.models[mid]["key"],
                UploadId=done.upload_id,
                MultipartUpload={"Parts": [{"ETag": e, "PartNumber": i + 1} for i, e in enumerate(done.etags)]},
            )
            self._send(pb.CreateUpdateResponse(id=mid))
        elif method == "GET" and (m := re.fullmatch(r"models/(\w+)", route)):
            self._send(self._model(m.group(1)))
        elif method == "GET" and (m := re.fullmatch(r"models/(\w+)/download", route)):
            mid = m.group(1)
            name = hub.models[mid]["pb"].name or f"{mid}.bin"
            self._send(
                pb.FileDownloadResponse(
                    url=pb.FileDownloadURL(url=hub.download_url(hub.models[mid]["key"]), filename=name)
                )
            )
        elif method == "POST" and route == "jobs":
            job = pb.Job()
            job.ParseFromString(body)
            self._send(pb.CreateUpdateResponse(id=self._run_job(job)))
        elif method == "GET" and (m := re.fullmatch(r"jobs/(\w+)", route)):
            self._send(hub.jobs[m.group(1)])
        elif method == "GET" and (m := re.fullmatch(r"jobs/(\w+)/result", route)):
            self._send(self._result(m.group(1)))
        elif method == "GET" and (m := re.fullmatch(r"jobs/(\w+)/download_compiled_model", route)):
            target = hub.jobs[m.group(1)].compile_job.target_model.model_id
            self._send(
                pb.FileDownloadResponse(
                    url=pb.FileDownloadURL(
                        url=hub.download_url(hub.models[target]["key"]), filename=hub.models[target]["pb"].name
                    )
                )
            )
        else:
            self._send(None, 404, f"stand-in: no route for {method} {path}")

    def _model(self, mid: str) -> pb.Model:
        model = pb.Model()
        model.CopyFrom(self.hub.models[mid]["pb"])
        model.model_id = mid
        return model

    def _run_job(self, job: pb.Job) -> str:
        """Jobs finish at once: a compile job writes its 'compiled' blob, a profile job has its profile ready."""
        hub = self.hub
        jid = hub.new_id("j")
        if job.HasField("compile_job"):
            cj = job.compile_job
            source = hub.s3.get_object(Bucket=BUCKET, Key=hub.models[cj.model.model_id]["key"])["Body"].read()
            blob = (
                b"AIHUB-STANDIN-QNN-CONTEXT\n"
                + f"{cj.device.name}\n{cj.options}\n".encode()
                + hashlib.sha256(source).digest()
            )
            tid = hub.new_id("m")
            hub.models[tid] = {
                "pb": pb.Model(name="steering.bin", model_type=pb.MODEL_TYPE_QNN_CONTEXT_BINARY),
                "key": f"models/{tid}",
            }
            hub.s3.put_object(Bucket=BUCKET, Key=f"models/{tid}", Body=blob)
            cj.compile_job_id = jid
            cj.job_state = pb.JOB_STATE_DONE
            cj.model.CopyFrom(self._model(cj.model.model_id))
            cj.target_model.CopyFrom(self._model(tid))
            cj.device.CopyFrom(_device(cj.device.name or hub.device))
        elif job.HasField("inference_job") and job.inference_job.is_profiling_on:
            # qai-hub 0.56 submits a profile job as an inference job with profiling on (public_rest_api.py)
            profile = job.inference_job
            profile.inference_job_id = jid
            profile.job_state = pb.JOB_STATE_DONE
            profile.model.CopyFrom(self._model(profile.model.model_id))
            profile.device.CopyFrom(_device(profile.device.name or hub.device))
            profile.execution_time = INFERENCE_US
        else:
            raise ValueError(f"stand-in: only compile and profile jobs, not {job}")
        hub.jobs[jid] = job
        return jid

    def _result(self, jid: str) -> pb.JobResult:
        job = self.hub.jobs[jid]
        if job.HasField("compile_job"):
            return pb.JobResult(compile_job_result=pb.CompileJobResult(compile_job_id=jid))
        detail = pb.ProfileDetail(
            major_version=1,
            minor_version=0,
            execution_time=INFERENCE_US,
            after_execution_peak_memory=PEAK_BYTES,
            cold_load_time=20_000,
            warm_load_time=5_000,
        )
        return pb.JobResult(inference_job_result=pb.InferenceJobResult(inference_job_id=jid, detail=detail))

    def _safe(self, method: str) -> None:
        try:
            self._route(method)
        except Exception as exc:  # a stand-in bug must answer 500 with the reason, not drop the connection
            import traceback

            self.hub.errors.append(traceback.format_exc())
            self._send(None, 500, f"stand-in error: {exc!r}")

    def do_GET(self) -> None:
        self._safe("GET")

    def do_POST(self) -> None:
        self._safe("POST")

    def do_PATCH(self) -> None:
        self._safe("PATCH")


@contextmanager
def aihub_standin(token: str = "standin-token", device: str = "SA8775P ADP") -> Iterator[StandIn]:
    """A running stand-in on 127.0.0.1 (random ports) with its own moto S3 server for the transfers."""
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    moto.start()
    host, port = moto.get_host_and_port()
    s3 = boto3.client(
        "s3",
        endpoint_url=f"http://{host}:{port}",
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
    )
    s3.create_bucket(Bucket=BUCKET)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    hub = StandIn(url=f"http://127.0.0.1:{server.server_address[1]}", token=token, device=device, s3=s3)
    _Handler.hub = hub
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield hub
    finally:
        server.shutdown()
        server.server_close()
        moto.stop()
