"""vllm-pod: POD-Attention (one fused kernel for prefill + decode) as a vLLM attention backend.

vLLM calls `register()` through the `vllm.general_plugins` entry point in every process it starts
(API server, engine core, workers). Registration only records names and class paths: it touches
no GPU and does not load the compiled extension.
"""

from __future__ import annotations

__all__ = ["register", "BACKEND_CLASS_PATH", "ENV_VAR"]

BACKEND_CLASS_PATH = "vllm_pod.backend.PodAttentionBackend"
ENV_VAR = "VLLM_ATTENTION_BACKEND"


def register() -> None:
    """Registers the POD backend with vLLM (idempotent)."""
    from vllm_pod import compat

    compat.register_backend(BACKEND_CLASS_PATH)
    compat.register_env_var(ENV_VAR)
    compat.install_env_selection(ENV_VAR)
