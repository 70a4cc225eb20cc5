"""Losses: pure functions ``(arrays…, *, hyper-parameters) -> scalar``, one family per file."""

from sketchreid_jax.losses.circle import circle_intra, circle_pairwise
from sketchreid_jax.losses.cmalign import dense_triplet
from sketchreid_jax.losses.distances import cosine_similarity, euclidean_distance
from sketchreid_jax.losses.identity import cross_entropy
from sketchreid_jax.losses.rtcl import rtcl, rtcl_terms
from sketchreid_jax.losses.style import style_refinement
from sketchreid_jax.losses.triplet import batch_hard_triplet, wrt_triplet
