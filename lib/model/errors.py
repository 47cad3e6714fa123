"""What can go wrong when a model or adapter is loaded, by name: every message says what to do."""
from __future__ import annotations

from .build.qwen7b import REAL_MODEL_ID


class ModelNotFoundError(FileNotFoundError):
    """No weights for the requested model on this machine; the message says where to put them."""


class AdapterMismatchError(ValueError):
    """An adapter or checkpoint was made for another base model (or variant) than the one asked for."""


class DamagedFilesError(ValueError):
    """A saved model or adapter folder is damaged (half-written, truncated, edited); names it and what to do."""


class MissingPackageError(ImportError):
    """A package the requested setting needs is not installed; the message names it and the alternative."""


def nf4_needs_bitsandbytes(err: Exception) -> MissingPackageError:
    """``quantization=nf4`` without a working bitsandbytes: install it, or load in bf16 (the files are fine)."""
    return MissingPackageError(
        f"quantization=nf4 needs bitsandbytes, which cannot be imported here ({type(err).__name__}: "
        f"{str(err).splitlines()[0][:200] if str(err) else ''}). Install it (`pip install bitsandbytes==0.50.2`, the "
        f"version pyproject.toml pins; NF4 runs on a CUDA GPU), or set quantization=none to load the model in "
        f"bf16. The model folder itself is not at fault: keep it.")


def model_not_found(name: str, err: Exception) -> ModelNotFoundError:
    """No weights for ``name``: where to put them, and the cpu profile's alternative."""
    from huggingface_hub.constants import HF_HUB_CACHE

    return ModelNotFoundError(
        f"no weights for {name!r} on this machine (nothing is downloaded at run time). Either put the model "
        f"in the Hugging Face cache ({HF_HUB_CACHE}, e.g. `huggingface-cli download {name}` on a machine "
        f"with network, then copy the cache folder here or set HF_HOME), or download it to a folder and pass "
        f"that folder as model_name_or_path (e.g. `huggingface-cli download {REAL_MODEL_ID} --local-dir "
        f"checkpoints/Qwen2-Audio-7B-Instruct`, then model_name_or_path=checkpoints/Qwen2-Audio-7B-Instruct). "
        f"For the cpu profile use model_name_or_path=tiny. ({type(err).__name__}: {err})")


def damaged_model(path: str, err: Exception, built_by_lib: bool) -> DamagedFilesError:
    """A model folder that is there but cannot be loaded: delete it, and rebuild or download it again."""
    return DamagedFilesError(
        f"cannot load the model in {path} ({type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}): the folder is "
        f"damaged or half-written; " + ("delete it to rebuild it (lib builds it again on first use)" if built_by_lib else
                                        "delete it and download or save the model again"))
