"""Checks of values handed to the engine from outside (ComfyUI node inputs, API workflows, scripts), each error
naming the input and what it expects.

A hand-edited or API workflow can put anything in an input: None, a number where a file name belongs, an empty
image batch, a 0x0 mask, NaN in a tensor, a list where a Redux conditioning belongs. Without these checks such
values reach torch or diffusers and come back as their errors (ZeroDivisionError, AttributeError, a reduction
error), naming nothing the user set. The caller passes the input's name; the message says what it holds and
what was expected, in one line.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch

from . import params

IMAGE_EXPECTED = "a ComfyUI IMAGE: a float tensor [batch >= 1, height >= 1, width >= 1, 3 or 4 channels]"
MASK_EXPECTED = "a ComfyUI MASK: a float tensor [batch >= 1, height >= 1, width >= 1] (or [height, width])"
REDUX_EXPECTED = "a REDUX_CONDITIONING from Redux Encode, Redux Encode Advanced, Redux Combine or Redux + Prompt"


class InputCheckError(ValueError):
    """An input holds what the engine cannot use. `name` is the input; the message is one line."""

    def __init__(self, name: str, problem: str, expected: str):
        self.name, self.problem, self.expected = name, problem, expected
        super().__init__(f"{name}: {problem}; expected {expected}")


def describe(value: Any) -> str:
    """A short description of any value, for messages (never its full contents)."""
    if value is None:
        return "nothing (None)"
    if isinstance(value, torch.Tensor):
        return f"a {str(value.dtype).removeprefix('torch.')} tensor of shape {list(value.shape)}"
    if isinstance(value, (list, tuple)):
        return f"a {type(value).__name__} of {len(value)} item(s)"
    if isinstance(value, (bool, int, float)):
        return f"the {type(value).__name__} {value!r}"
    if isinstance(value, str):
        return f"the text {value[:40]!r}"
    return f"a {type(value).__name__}"


def finite(tensor: torch.Tensor, name: str, expected: str) -> torch.Tensor:
    """Refuse NaN or infinite values (they give black or noise images without any other error)."""
    if tensor.is_floating_point() or tensor.is_complex():
        bad = int((~torch.isfinite(tensor)).sum())
        if bad:
            raise InputCheckError(name, f"{bad} of its {tensor.numel()} values are NaN or infinite", expected)
    return tensor


def image_batch(value: Any, name: str = "image") -> torch.Tensor:
    """A ComfyUI IMAGE with at least one image of at least 1x1 pixel, 3 or 4 channels, finite; [B, H, W, C]."""
    if not isinstance(value, torch.Tensor):
        raise InputCheckError(name, f"got {describe(value)}", IMAGE_EXPECTED)
    if value.ndim not in (3, 4) or value.shape[-1] not in (3, 4):
        raise InputCheckError(name, f"got {describe(value)}", IMAGE_EXPECTED)
    return _pixels_batch(value if value.ndim == 4 else value[None], name, "image", IMAGE_EXPECTED)


def mask_batch(value: Any, name: str = "mask") -> torch.Tensor:
    """A ComfyUI MASK with at least one mask of at least 1x1 pixel, finite; [B, H, W]."""
    if not isinstance(value, torch.Tensor) or value.ndim not in (2, 3):
        raise InputCheckError(name, f"got {describe(value)}", MASK_EXPECTED)
    return _pixels_batch(value if value.ndim == 3 else value[None], name, "mask", MASK_EXPECTED)


def _pixels_batch(batch: torch.Tensor, name: str, noun: str, expected: str) -> torch.Tensor:
    """What IMAGE and MASK batches share: at least one item, at least 1x1 pixel, finite values."""
    if batch.shape[0] == 0:
        raise InputCheckError(name, f"the batch is empty (0 {noun}s)", expected)
    if batch.shape[1] == 0 or batch.shape[2] == 0:
        raise InputCheckError(name, f"the {noun} has no pixels ({batch.shape[2]}x{batch.shape[1]})", expected)
    return finite(batch, name, expected)


def redux_conditioning(value: Any, name: str = "conditioning", used: bool = True):
    """A ReduxConditioning whose tokens are [1, tokens >= 1, width], finite, with a finite prompt if it has one.
    used: it conditions images here (Generate, Redux -> Conditioning), so a reference weight above 0 is needed:
    all at 0 the images would ignore every reference without a word. A blend input may be 0 (others count)."""
    from .redux import ReduxConditioning

    if not isinstance(value, ReduxConditioning):
        raise InputCheckError(name, f"got {describe(value)}", REDUX_EXPECTED)
    tokens = value.image_tokens
    if not isinstance(tokens, torch.Tensor) or tokens.ndim != 3 or tokens.shape[0] != 1 or tokens.shape[1] == 0:
        raise InputCheckError(name, f"its Redux tokens are {describe(tokens)}",
                              "Redux tokens [1, tokens >= 1, width] as Redux Encode makes them")
    finite(tokens, name, "finite Redux tokens (re-encode the reference; check the Redux model file)")
    if used and not any(w > 0 for w in value.weights):
        raise InputCheckError(name, "every reference in it has weight 0, so the images would ignore every reference",
                              "at least one reference with a weight (or strength) above 0")
    if value.text is not None:
        text_conditioning(value.text.embeds, value.text.pooled, f"{name} (its prompt)")
    return value


def text_conditioning(embeds: Any, pooled: Any, name: str) -> None:
    """A prompt's tokens [batch, tokens, width] and optional pooled vector, finite."""
    expected = "a FLUX prompt CONDITIONING from CLIPTextEncode (finite T5 tokens [batch, tokens, width])"
    if not isinstance(embeds, torch.Tensor) or embeds.ndim != 3 or 0 in embeds.shape:
        raise InputCheckError(name, f"its tokens are {describe(embeds)}", expected)
    finite(embeds, name, expected)
    if pooled is not None:
        if not isinstance(pooled, torch.Tensor):
            raise InputCheckError(name, f"its pooled_output is {describe(pooled)}", expected)
        finite(pooled, f"{name} pooled_output", "a finite CLIP-L pooled vector")


def total_weight(weights: Mapping[str, float]) -> None:
    """At least one of the named weights above 0: all at 0 would give images that ignore every reference."""
    if weights and not any(w > 0 for w in weights.values()):
        names = ", ".join(f"{n}={w:g}" for n, w in weights.items())
        raise InputCheckError(names, "every reference weight is 0, so the images would ignore every reference",
                              "at least one weight above 0 (remove a reference instead of weighting it 0)")


def file_choice(value: Any, name: str, folder: str) -> str:
    """A file widget's value: a non-empty file name from the list (an API workflow may carry null or 5)."""
    if not isinstance(value, str) or not value.strip():
        raise InputCheckError(name, f"got {describe(value)}",
                              f"a file name from the list of models/{folder} (or a diffusers/<folder> entry)")
    return value


def check_device(device: Any, name: str = "device", use: str = "device cpu or auto") -> str:
    """A device torch has on this machine: auto, cpu, cuda, cuda:N or mps. `use` is how the caller's user sets
    another one (the CLI says --device cpu)."""
    expected = "expected auto, cpu, cuda, cuda:N or mps"
    if not isinstance(device, str):
        raise params.ParameterError(name, device, expected)
    if device == "auto":
        return device
    try:
        chosen = torch.device(device)
    except (RuntimeError, ValueError):
        raise params.ParameterError(name, device, expected) from None
    if chosen.type == "cuda":
        if not torch.cuda.is_available():
            raise params.ParameterError(name, device, "CUDA is not available here (this torch build or driver has "
                                                      f"no usable GPU); use {use}")
        if chosen.index is not None and chosen.index >= torch.cuda.device_count():
            raise params.ParameterError(name, device, f"this machine has {torch.cuda.device_count()} CUDA "
                                                      "device(s), numbered from 0")
    elif chosen.type == "mps":
        if not torch.backends.mps.is_available():
            raise params.ParameterError(name, device, f"MPS is not available here; use {use}")
    elif chosen.type != "cpu":
        raise params.ParameterError(name, device, expected)
    return device
