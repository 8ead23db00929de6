"""The seam between the stages and a model family.

The cache and train stages, validation and the smoke run never name a family: they take the
one `spec.model.family` names from runner.models.registry and call it through ModelFamily.
A family is one module (runner/models/pixart_sigma.py is the first) that implements this
Protocol as its `FAMILY`. What a family needs from a spec, and what `validate` checks a spec
against, is in its FamilyTraits: plain data, kept in the registry, so validation stays
torch-free.

Components (a loaded text encoder, a VAE, a transformer, a validation pipeline) are whatever
the family's loaders return; the stages only hand them back to the family.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Protocol, Sequence, runtime_checkable

if TYPE_CHECKING:  # annotations only: this module is on the torch-free side
    import torch
    from PIL.Image import Image


@dataclass(frozen=True)
class FamilyTraits:
    """What the rest of the runner knows about a family without loading it."""

    name: str  # as in spec.model.family
    title: str  # for messages
    implementation: str  # the module whose FAMILY implements ModelFamily, imported on first use
    vae_scale_factor: int  # image px per latent px
    patch_size: int  # latent px per transformer token (each side)
    max_side: int  # the largest side the family was trained for, in px
    max_tokens: int  # text tokens per caption the text encoder was trained with
    latent_channels: int  # latent channels: the transformer's first this many output channels are trained
    # The builtin tiny model of the same architecture (random weights, built offline): what a
    # smoke run swaps in for `pretrained`, so the user's spec runs on a CPU in seconds.
    tiny_model: str
    # The pipeline's subfolders: what is downloaded, and which of them the cache keys cover.
    components: tuple[str, ...]
    text_components: tuple[str, ...]
    vae_component: str
    guidance_range: tuple[float, float] | None = None  # where validation images look best

    @property
    def resolution_multiple(self) -> int:
        """Image sides must be multiples of this: one transformer token is this many px."""
        return self.vae_scale_factor * self.patch_size

    @property
    def tag(self) -> str:
        """The family as a Hub model-card tag (`pixart-sigma`)."""
        return self.name.replace("_", "-")


class Objective(Protocol):
    """The training loss of one batch: noise the latents at random timesteps, predict with
    the text conditioning, compare with the family's target."""

    def __call__(self, model: torch.nn.Module, latents: torch.Tensor, embeds: torch.Tensor, mask: torch.Tensor,
                 generator: torch.Generator | None = None) -> torch.Tensor: ...


@runtime_checkable
class ModelFamily(Protocol):
    """Everything the stages do with a model, for one family."""

    traits: FamilyTraits

    # ---- components
    def resolve(self, ref: str, revision: str, cache_dir: Path, **retry: Any) -> Path:
        """The local pipeline folder `spec.model.pretrained` names (a builtin, a folder or a Hub id)."""

    def load_text_encoder(self, model_dir: Path, dtype: str, device: Any) -> Any:
        """The text encoder (with its tokenizer), frozen, on `device`."""

    def load_vae(self, model_dir: Path, dtype: str, device: Any, compile: bool = False) -> Any:
        """The VAE, frozen, on `device`; `compile` (spec.model.vaeCompile) where that is faster."""

    def load_transformer(self, model_dir: Path, *, bit_fit: bool, gradient_checkpointing: bool) -> torch.nn.Module:
        """The denoiser to train, in float32, its trainable parameters marked."""

    def set_attention(self, transformer: torch.nn.Module, backend: str, device: Any) -> tuple[str, str | None]:
        """Attention kernels for training (spec.model.attention); returns the kernels used and why not others."""

    def set_feed_forward(self, transformer: torch.nn.Module, choice: str, device: Any) -> tuple[str, str | None]:
        """The feed-forward for training (spec.model.feedForward); returns what is used and why not
        the requested one."""

    def bf16_residual(self, transformer: torch.nn.Module) -> int:
        """Carry the residual stream in the autocast dtype (spec.training.residualStream:
        bfloat16); returns how many blocks now do (0: the family keeps its own dtypes)."""

    def compile(self, transformer: torch.nn.Module, dynamic: bool = True) -> int:
        """torch.compile the transformer in place (`dynamic`: spec.training.compileDynamic);
        returns how many blocks were compiled."""

    # ---- text
    def token_counts(self, text_encoder: Any, captions: Sequence[str]) -> list[int]:
        """Each caption's length in tokens before truncation (to report captions that are cut)."""

    def encode_text(self, text_encoder: Any, captions: Sequence[str], max_tokens: int) -> list[torch.Tensor]:
        """One embedding per caption, trimmed to its real length ([L_i, D], on the CPU): the cache entry."""

    def pad_text(self, embeds: Sequence[torch.Tensor], multiple: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """Cached embeddings as a batch plus its attention mask, as the transformer takes them."""

    # ---- images
    def image_to_tensor(self, image: Image) -> torch.Tensor:
        """A cropped RGB image as the VAE's input."""

    def encode_images(self, vae: Any, pixels: torch.Tensor, seeds: Sequence[int] | None = None) -> torch.Tensor:
        """Scaled latents (float32), the noise of each image seeded when `seeds` are given."""

    # ---- training
    def objective(self, model_dir: Path, transformer: torch.nn.Module) -> Objective:
        """The loss, with the pipeline's own noise schedule and prediction target."""

    # ---- validation
    def validation_pipeline(self, model_dir: Path, transformer: torch.nn.Module, vae: Any, dtype: torch.dtype) -> Any:
        """A pipeline around the live transformer that samples from cached text embeddings."""

    def render(self, pipe: Any, embeds: torch.Tensor, negative: torch.Tensor, mask: torch.Tensor, *, width: int,
               height: int, steps: int, guidance: float, generator: torch.Generator) -> Image:
        """One validation image from a prompt's and the negative prompt's embeddings ([2, L] mask)."""

    # ---- export
    def export(self, model_dir: Path, transformer: torch.nn.Module, dest: Path,
               files: Mapping[str, bytes] | None = None) -> Path:
        """The base pipeline with the trained transformer, and `files` (name: content) at its
        top, as a complete folder at `dest`."""
