"""Everything that differs between the vLLM versions we support (0.26 .. 0.33) lives here.

- 0.26 can only point the placeholder `AttentionBackendEnum.CUSTOM` at a plugin class; newer
  versions (0.33) can add names (`AttentionBackendEnum.register`), so there we also add `POD`.
- 0.26 asks a backend for its KV cache shape and stride order; 0.33 fixes the logical shape
  itself and asks for layouts (we accept any: the kernel takes strides).
- Neither version reads `VLLM_ATTENTION_BACKEND` any more; the plugin honours `=POD` itself.
- Newer versions pass more selector fields to `validate_configuration`; the backend forwards
  them all to vLLM's own checks and reads the rest of the configuration from the VllmConfig.
"""

from __future__ import annotations

import functools
import os
from typing import TYPE_CHECKING

from vllm.logger import init_logger

if TYPE_CHECKING:
    import torch

# Under the "vllm" logger so vLLM's handlers and VLLM_LOGGING_LEVEL apply.
logger = init_logger("vllm.pod")

POD = "POD"
CUSTOM = "CUSTOM"

# True when we (not vLLM) declared the environment variable; then only POD is meaningful.
_env_var_is_ours = False


def register_backend(class_path: str) -> None:
    """Points CUSTOM (and POD, where names can be added) at our backend class."""
    from vllm.v1.attention.backends.registry import AttentionBackendEnum, register_backend

    custom = AttentionBackendEnum.CUSTOM
    if custom.is_overridden() and custom.get_path() != class_path:
        logger.warning("vllm-pod: AttentionBackendEnum.CUSTOM was registered as %s; "
                       "re-pointing it at %s", custom.get_path(), class_path)
    register_backend(custom, class_path)
    if hasattr(AttentionBackendEnum, "register"):
        if POD in AttentionBackendEnum.__members__:
            register_backend(AttentionBackendEnum[POD], class_path)
        else:
            AttentionBackendEnum.register(POD, class_path)


def backend_name() -> str:
    """The enum member name vLLM finds our backend under (it looks backends up by get_name())."""
    from vllm.v1.attention.backends.registry import AttentionBackendEnum

    return POD if POD in AttentionBackendEnum.__members__ else CUSTOM


def register_env_var(name: str) -> None:
    """Declares the variable to vLLM: silences its "Unknown vLLM environment variable" warning
    and, since every declared variable feeds `envs.compile_factors()`, keys the compile cache."""
    global _env_var_is_ours
    import vllm.envs as envs

    if name not in envs.environment_variables:
        envs.environment_variables[name] = lambda: os.getenv(name)
        _env_var_is_ours = True


def apply_env_selection(attention_config, env_var: str) -> None:
    """`VLLM_ATTENTION_BACKEND=POD` selects our backend when no backend was chosen explicitly."""
    from vllm.v1.attention.backends.registry import AttentionBackendEnum

    requested = os.environ.get(env_var, "").strip()
    if attention_config.backend is None and requested:
        if requested.upper() in (POD, CUSTOM):
            attention_config.backend = AttentionBackendEnum.CUSTOM
        elif _env_var_is_ours:
            logger.warning("vllm-pod: %s=%s ignored; this vLLM only honours %s=POD (use "
                           "--attention-backend to pick another backend)", env_var, requested,
                           env_var)
    # A name added at run time (POD) cannot be unpickled in a spawned process before the plugin
    # has run there, and the config is pickled to the engine and workers; CUSTOM is a built-in
    # member naming the same class.
    backend = attention_config.backend
    if backend is not None and backend.name == POD:
        attention_config.backend = AttentionBackendEnum.CUSTOM


def install_env_selection(env_var: str) -> None:
    """Applies `apply_env_selection` to every VllmConfig built from now on in this process,
    before vLLM's own post-init (which picks block sizes and graph modes for the backend)."""
    from vllm.config import VllmConfig

    post_init = VllmConfig.__post_init__
    if getattr(post_init, "_vllm_pod_env_selection", False):
        return

    @functools.wraps(post_init)
    def __post_init__(self, *args, **kwargs):
        apply_env_selection(self.attention_config, env_var)
        return post_init(self, *args, **kwargs)

    __post_init__._vllm_pod_env_selection = True
    VllmConfig.__post_init__ = __post_init__


def kv_cache_stride_order(include_num_layers_dimension: bool) -> tuple[int, ...]:
    """vLLM 0.26: physical order of the logical (blocks, kv heads, block size, 2*head dim) cache,
    the same as FLASH_ATTN's so that KV connectors see the layout they expect."""
    from vllm.v1.attention.backends.utils import get_kv_cache_layout

    layout = get_kv_cache_layout()
    if layout == "NHD":
        return (1, 0, 3, 2, 4) if include_num_layers_dimension else (0, 2, 1, 3)
    if layout == "HND":
        return (1, 2, 0, 3, 4) if include_num_layers_dimension else (0, 1, 2, 3)
    raise ValueError(f"unknown KV cache layout {layout}")


def seq_lens_cpu(common_attn_metadata) -> "torch.Tensor":
    """Host copy of the batch's sequence lengths, without a device->host sync. Both model runners
    of 0.26 and 0.33 provide it; it is exact except under asynchronous scheduling with speculative
    decoding, which backend selection refuses."""
    seq_lens = common_attn_metadata.seq_lens_cpu_upper_bound
    if seq_lens is None:
        raise RuntimeError("POD attention plans from CommonAttentionMetadata."
                           "seq_lens_cpu_upper_bound, which this caller did not set")
    return seq_lens[: common_attn_metadata.num_reqs]
