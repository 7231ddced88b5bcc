"""The training loss of one Reflow round: `ReflowLoss(kind)` and `combine(kind, huber, lpips, t)`.

Conventions (docs/conventions.md): x_t = (1 − t)·x + t·z, t = 0 data, t = 1 noise; target v = z − x; predicted
data x̂ = x_t − t·v̂. Images live in [−1, 1]. Every loss is per sample, shape (N,); the caller takes the mean.

kinds:
- "l2": RMS error of v̂ vs v; "l2-squared": mean squared error (the 2-RF baseline);
- "pseudo-huber": (sqrt(‖v̂ − v‖² + c²) − c)/d, c = 0.00054·d ("reference") or 0.00054·√d ("ict");
- "lpips": LPIPS(x̂, x);
- "lpips-huber": (1 − t)·pseudo-huber + LPIPS(x̂, x);
- "lpips-huber-1/t": (1 − t)·pseudo-huber + LPIPS(x̂, x)/t.
"""

from __future__ import annotations

import torch
from torch import nn

from rfpp.losses.kinds import HUBER_C_MODES, HUBER_KINDS, KINDS, PERCEPTUAL_KINDS
from rfpp.losses.pointwise import check_same_shape, l2, l2_squared, pseudo_huber


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"unknown loss kind {kind!r}; valid kinds: {', '.join(KINDS)}")


def combine(kind: str, huber: torch.Tensor | None = None, lpips: torch.Tensor | None = None,
            t: torch.Tensor | None = None) -> torch.Tensor:
    """Combine precomputed per-sample terms (each (N,)) into the loss of a huber/lpips kind → (N,).

    "pseudo-huber" → huber; "lpips" → lpips; "lpips-huber" → (1 − t)·huber + lpips;
    "lpips-huber-1/t" → (1 − t)·huber + lpips/t. t: (N,) times in (0, 1), t = 1 noise.
    """
    _check_kind(kind)
    if kind not in HUBER_KINDS + PERCEPTUAL_KINDS:
        raise ValueError(f"combine() handles the pseudo-huber and lpips kinds, not {kind!r}")
    if kind in HUBER_KINDS and huber is None:
        raise ValueError(f"kind {kind!r} needs the pseudo-huber term")
    if kind in PERCEPTUAL_KINDS and lpips is None:
        raise ValueError(f"kind {kind!r} needs the lpips term")
    if kind == "pseudo-huber":
        assert huber is not None
        return huber
    if kind == "lpips":
        assert lpips is not None
        return lpips
    assert huber is not None and lpips is not None
    if t is None:
        raise ValueError(f"kind {kind!r} needs t")
    if not (huber.shape == lpips.shape == t.shape and huber.ndim == 1):
        raise ValueError(f"huber, lpips and t must all have shape (N,), got {tuple(huber.shape)}, "
                         f"{tuple(lpips.shape)}, {tuple(t.shape)}")
    weighted = (1 - t) * huber
    return weighted + (lpips / t if kind == "lpips-huber-1/t" else lpips)


class ReflowLoss(nn.Module):
    """Per-sample Reflow training loss of the given kind (see the module docstring).

    perceptual: the perceptual module for the lpips kinds, called as perceptual(x̂, x) → (N,), e.g.
    `LPIPS()` (VGG16, the paper's) or `FeatureLPIPS(net)`; it stays frozen and in eval mode.
    huber_c_mode: "reference" (c = 0.00054·d) or "ict" (c = 0.00054·√d).
    """

    def __init__(self, kind: str, perceptual: nn.Module | None = None, huber_c_mode: str = "reference") -> None:
        super().__init__()
        _check_kind(kind)
        if huber_c_mode not in HUBER_C_MODES:
            raise ValueError(f"unknown huber_c_mode {huber_c_mode!r}; valid: {', '.join(HUBER_C_MODES)}")
        if kind in PERCEPTUAL_KINDS and perceptual is None:
            raise ValueError(f"loss kind {kind!r} needs a perceptual network: pass perceptual=LPIPS() "
                             "(VGG16 ImageNet weights) or FeatureLPIPS(feature_net)")
        self.kind = kind
        self.huber_c_mode = huber_c_mode
        self.perceptual = perceptual if kind in PERCEPTUAL_KINDS else None
        if self.perceptual is not None:
            self.perceptual.requires_grad_(False)
            self.perceptual.eval()

    def train(self, mode: bool = True) -> ReflowLoss:
        """Nothing here trains: the module (and its perceptual network) stays in eval mode."""
        return super().train(False)

    def describe(self) -> str:
        """The kind, the Huber constant and which perceptual network is used."""
        parts = [self.kind]
        if self.kind in HUBER_KINDS:
            parts.append("huber c = 0.00054·" + ("d" if self.huber_c_mode == "reference" else "√d"))
        if self.perceptual is None:
            parts.append("no perceptual network")
        else:
            describe = getattr(self.perceptual, "describe", None)
            parts.append("perceptual: " + (describe() if callable(describe) else type(self.perceptual).__name__))
        return "; ".join(parts)

    def forward(self, v_pred: torch.Tensor, v_target: torch.Tensor, x_t: torch.Tensor, x0: torch.Tensor,
                t: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Loss per sample and its terms.

        v_pred: predicted velocity v̂ (N, C, H, W), gradients flow through it; v_target: v = z − x0;
        x_t: the network input (1 − t)·x0 + t·z; x0: the data (t = 0) in [−1, 1]; t: (N,) (or N elements)
        in (0, 1). Returns (loss (N,), terms) with terms a dict of detached per-sample values (N,) keyed
        "l2", "l2_squared", "pseudo_huber" and/or "lpips".
        """
        check_same_shape(v_pred, v_target, ("v_pred", "v_target"))
        check_same_shape(v_pred, x_t, ("v_pred", "x_t"))
        check_same_shape(v_pred, x0, ("v_pred", "x0"))
        n = v_pred.shape[0]
        t = torch.as_tensor(t, device=v_pred.device)
        if t.numel() != n:
            raise ValueError(f"t must hold one time per sample ({n}), got shape {tuple(t.shape)}")
        t = t.reshape(n)
        terms: dict[str, torch.Tensor] = {}
        if self.kind == "l2":
            loss = l2(v_pred, v_target)
            terms["l2"] = loss.detach()
            return loss, terms
        if self.kind == "l2-squared":
            loss = l2_squared(v_pred, v_target)
            terms["l2_squared"] = loss.detach()
            return loss, terms
        huber = lpips = None
        if self.kind in HUBER_KINDS:
            huber = pseudo_huber(v_pred, v_target, c_mode=self.huber_c_mode)
            terms["pseudo_huber"] = huber.detach()
        if self.kind in PERCEPTUAL_KINDS:
            assert self.perceptual is not None
            dtype = torch.promote_types(torch.promote_types(v_pred.dtype, x_t.dtype), torch.float32)
            t_b = t.to(dtype).view(n, *([1] * (v_pred.ndim - 1)))
            x_hat = x_t.to(dtype) - t_b * v_pred.to(dtype)  # predicted data
            lpips = self.perceptual(x_hat, x0)
            if lpips.shape != (n,):
                raise ValueError(f"the perceptual network must return shape ({n},), got {tuple(lpips.shape)}")
            terms["lpips"] = lpips.detach()
        tt = t.to(torch.promote_types(t.dtype, torch.float32))
        return combine(self.kind, huber, lpips, tt), terms
