"""Self-supervised objectives, each written from its paper's loss, plus the supervised baseline.

Losses (functions on embedding tensors) are separate from the trainable parts (projection heads, predictors,
EMA targets: :class:`Objective` subclasses), so each loss can be checked on tiny hand-computed cases.
"""

from __future__ import annotations

import copy
import itertools
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from riskdecomp.pretrain.recipe import HeadConfig, Recipe

# ----------------------------------------------------------------------------------------------- losses


def nt_xent(views: Sequence[torch.Tensor], temperature: float = 0.2) -> torch.Tensor:
    """NT-Xent / InfoNCE (SimCLR, Chen et al. 2020) for V >= 2 views of N samples (each view (N, D)).

    With u = z / ||z|| over all V*N embeddings and s_ij = u_i . u_j / tau, the loss of anchor i is
    -1/|P(i)| sum_{p in P(i)} log( exp(s_ip) / sum_{k != i} exp(s_ik) ), P(i) = the other views of i's sample;
    returns the mean over anchors. For V = 2 this is exactly SimCLR's NT-Xent.
    """
    v = len(views)
    if v < 2:
        raise ValueError("nt_xent needs at least 2 views")
    n = views[0].shape[0]
    u = F.normalize(torch.cat(list(views), 0), dim=1)
    sim = u @ u.T / temperature
    eye = torch.eye(v * n, dtype=torch.bool, device=u.device)
    logp = sim.masked_fill(eye, float("-inf")).log_softmax(1)
    ids = torch.arange(n, device=u.device).repeat(v)
    pos = (ids[:, None] == ids[None, :]) & ~eye
    return -(logp.masked_fill(~pos, 0).sum(1) / (v - 1)).mean()


def normalized_mse(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """BYOL's loss (Grill et al. 2020): ||p/|p| - z/|z|||^2 = 2 - 2 cos(p, z), mean over samples; z is the target
    (no gradient flows into it)."""
    return (2 - 2 * F.cosine_similarity(p, z.detach(), dim=1)).mean()


def negative_cosine(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """SimSiam's loss (Chen & He 2021): D(p, z) = -cos(p, stopgrad(z)), mean over samples."""
    return -F.cosine_similarity(p, z.detach(), dim=1).mean()


def vicreg_terms(z1: torch.Tensor, z2: torch.Tensor, eps: float = 1e-4) -> dict:
    """The three VICReg terms (Bardes et al. 2022) of two (N, D) embeddings:

    invariance = mean_{n,d} (z1 - z2)^2;
    variance   = sum_{b in 1,2} mean_d relu(1 - sqrt(Var_n(z_b[:, d]) + eps)) / 2  (zero when every std >= 1);
    covariance = sum_{b} sum_{i != j} C_b[i, j]^2 / D, C_b the (N-1)-normalized covariance of z_b.
    """
    n, d = z1.shape
    inv = F.mse_loss(z1, z2)
    var = 0.0
    cov = 0.0
    for z in (z1, z2):
        std = torch.sqrt(z.var(0) + eps)
        var = var + F.relu(1 - std).mean() / 2
        zc = z - z.mean(0)
        c = zc.T @ zc / (n - 1)
        off = c - torch.diag(torch.diag(c))
        cov = cov + off.pow(2).sum() / d
    return {"invariance": inv, "variance": var, "covariance": cov}


def vicreg_loss(z1, z2, sim_coeff: float = 25.0, std_coeff: float = 25.0, cov_coeff: float = 1.0) -> torch.Tensor:
    """VICReg = 25 * invariance + 25 * variance + 1 * covariance (the paper's default weights)."""
    t = vicreg_terms(z1, z2)
    return sim_coeff * t["invariance"] + std_coeff * t["variance"] + cov_coeff * t["covariance"]


def barlow_twins_loss(z1: torch.Tensor, z2: torch.Tensor, lambd: Optional[float] = None,
                      eps: float = 1e-5) -> torch.Tensor:
    """Barlow Twins (Zbontar et al. 2021): with each dimension standardized over the batch and
    C = z1n^T z2n / N the cross-correlation, loss = sum_i (1 - C_ii)^2 + lambda sum_{i != j} C_ij^2.

    ``lambd=None`` uses lambda = 1 / D (Tsai et al. 2021): the paper's 5e-3 was tuned for D = 8192 and the
    off-diagonal sum grows like D^2, so it is scaled with the dimension (1/D ~ 5e-3 at D ~ 200).
    """
    n, d = z1.shape
    lam = 1.0 / d if lambd is None else lambd
    a = (z1 - z1.mean(0)) / (z1.std(0, unbiased=False) + eps)
    b = (z2 - z2.mean(0)) / (z2.std(0, unbiased=False) + eps)
    c = a.T @ b / n
    diag = torch.diagonal(c)
    return (1 - diag).pow(2).sum() + lam * (c.pow(2).sum() - diag.pow(2).sum())


def kl_standard_normal(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, diag sigma^2) || N(0, I)) per sample, in nats:
    0.5 * sum_d (mu_d^2 + sigma_d^2 - 1 - log sigma_d^2)."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum(-1)


def reparameterize(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """z = mu + sigma * eps, eps ~ N(0, I) (differentiable in mu and sigma)."""
    return mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)


# ----------------------------------------------------------------------------------------------- heads


def build_head(config: HeadConfig, in_dim: int) -> tuple:
    """Projection head -> (module, out_dim): ``none`` (identity), ``linear`` (in -> out_dim) or ``mlp``
    (depth linear layers: depth-1 blocks Linear(width) + BatchNorm + ReLU, then Linear(out_dim))."""
    if config.kind == "none":
        return nn.Identity(), in_dim
    if config.kind == "linear":
        return nn.Linear(in_dim, config.out_dim), config.out_dim
    layers, d = [], in_dim
    for _ in range(config.depth - 1):
        layers += [nn.Linear(d, config.width), nn.BatchNorm1d(config.width), nn.ReLU(inplace=True)]
        d = config.width
    layers.append(nn.Linear(d, config.out_dim))
    return nn.Sequential(*layers), config.out_dim


def build_predictor(dim: int, width: int) -> nn.Module:
    """BYOL / SimSiam predictor: Linear(dim, width) + BatchNorm + ReLU + Linear(width, dim)."""
    return nn.Sequential(nn.Linear(dim, width), nn.BatchNorm1d(width), nn.ReLU(inplace=True), nn.Linear(width, dim))


# ----------------------------------------------------------------------------------------------- objectives


class Objective(nn.Module):
    """Trainable parts of an objective besides the encoder; ``loss(encoder, views, labels)`` -> scalar."""

    n_views_used: Optional[int] = None  # None: all the recipe's views

    def __init__(self, recipe: Recipe, encoder: nn.Module):
        super().__init__()
        self.recipe = recipe
        self.head, self.proj_dim = build_head(recipe.head, recipe.z_dim)

    def project(self, encoder, x):
        return self.head(encoder(x))

    def loss(self, encoder, views, labels=None) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    @torch.no_grad()
    def after_step(self, encoder) -> None:
        """Called after each optimizer step (BYOL's EMA update)."""


def _pairs(v: int):
    return list(itertools.combinations(range(v), 2))


class SimCLR(Objective):
    def loss(self, encoder, views, labels=None):
        return nt_xent([self.project(encoder, x) for x in views], self.recipe.temperature)


class VICReg(Objective):
    def loss(self, encoder, views, labels=None):
        z = [self.project(encoder, x) for x in views]
        return sum(vicreg_loss(z[i], z[j]) for i, j in _pairs(len(z))) / len(_pairs(len(z)))


class BarlowTwins(Objective):
    def loss(self, encoder, views, labels=None):
        z = [self.project(encoder, x) for x in views]
        return sum(barlow_twins_loss(z[i], z[j]) for i, j in _pairs(len(z))) / len(_pairs(len(z)))


class SimSiam(Objective):
    """Symmetrized D(p_i, stopgrad z_j) / 2 over all ordered pairs of views."""

    def __init__(self, recipe, encoder):
        super().__init__(recipe, encoder)
        self.predictor = build_predictor(self.proj_dim, recipe.head.width)

    def loss(self, encoder, views, labels=None):
        z = [self.project(encoder, x) for x in views]
        p = [self.predictor(zi) for zi in z]
        terms = [negative_cosine(p[i], z[j]) for i in range(len(z)) for j in range(len(z)) if i != j]
        return sum(terms) / len(terms)


class BYOL(SimSiam):
    """Online (encoder + head + predictor) predicts a target network (EMA of encoder + head, momentum ``ema``)."""

    def __init__(self, recipe, encoder):
        super().__init__(recipe, encoder)
        self.target_encoder = copy.deepcopy(encoder)
        self.target_head = copy.deepcopy(self.head)
        for p in itertools.chain(self.target_encoder.parameters(), self.target_head.parameters()):
            p.requires_grad_(False)

    def loss(self, encoder, views, labels=None):
        p = [self.predictor(self.project(encoder, x)) for x in views]
        with torch.no_grad():
            t = [self.target_head(self.target_encoder(x)) for x in views]
        terms = [normalized_mse(p[i], t[j]) for i in range(len(p)) for j in range(len(p)) if i != j]
        return sum(terms) / len(terms)

    @torch.no_grad()
    def after_step(self, encoder) -> None:
        m = self.recipe.ema
        for online, target in ((encoder, self.target_encoder), (self.head, self.target_head)):
            for po, pt in zip(online.parameters(), target.parameters()):
                pt.mul_(m).add_(po.detach(), alpha=1 - m)
            for bo, bt in zip(online.buffers(), target.buffers()):
                bt.copy_(bo)


class Stochastic(Objective):
    """Stochastic contrastive: z = mu + sigma * eps per view, NT-Xent on head(z), + beta * mean KL(q || N(0, I))."""

    def loss(self, encoder, views, labels=None):
        zs, kl = [], 0.0
        for x in views:
            mu, logvar = encoder.posterior(x)
            zs.append(self.head(reparameterize(mu, logvar)))
            kl = kl + kl_standard_normal(mu, logvar).mean()
        return nt_xent(zs, self.recipe.temperature) + self.recipe.beta * kl / len(views)


class Supervised(Objective):
    """Cross-entropy of a linear classifier on the representation (one augmented view)."""

    n_views_used = 1

    def __init__(self, recipe, encoder, n_classes: int):
        super().__init__(recipe, encoder)
        self.head = nn.Identity()
        self.classifier = nn.Linear(recipe.z_dim, n_classes)

    def loss(self, encoder, views, labels=None):
        return F.cross_entropy(self.classifier(encoder(views[0])), labels)


OBJECTIVES = {"simclr": SimCLR, "byol": BYOL, "simsiam": SimSiam, "vicreg": VICReg,
              "barlow_twins": BarlowTwins, "stochastic": Stochastic}


def build_objective(recipe: Recipe, encoder: nn.Module, n_classes: Optional[int] = None) -> Objective:
    """The :class:`Objective` of a recipe (``supervised`` needs ``n_classes``; ``init`` has none)."""
    if recipe.objective == "supervised":
        if not n_classes:
            raise ValueError("the supervised objective needs the number of classes")
        return Supervised(recipe, encoder, n_classes)
    if recipe.objective not in OBJECTIVES:
        raise ValueError(f"objective {recipe.objective!r} trains nothing")
    return OBJECTIVES[recipe.objective](recipe, encoder)
