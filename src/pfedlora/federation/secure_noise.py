"""Gaussian noise and uniform draws from a cryptographically secure keystream, for DP releases.

Why not torch's generator: its CPU generator (mt19937) keeps only the low 32 bits of its seed, so
noise seeded from 64 secret bits could be found by a 2^32 offline search and subtracted from a
broadcast (issue 35). Here every call takes a fresh 256-bit key from the operating system
(``os.urandom``), runs ChaCha20 (RFC 8439, from the ``cryptography`` package, i.e. OpenSSL) over
zeros to get a keystream, reads it as 64-bit words, turns each into a uniform on (0, 1) with 53
random bits, and makes Gaussians with the Box-Muller transform. As Opacus's ``secure_mode`` did
with torchcsprng, a Gaussian of std s is the sum of four draws of std s/2, which blunts the
floating-point attacks on the low bits of a single sample (Mironov, CCS 2012).

Nothing here takes a seed: the output is a function of the 32 key bytes alone, and those never
leave this module. Throughput: ``python benchmarks/secure_noise.py``.
"""

from __future__ import annotations

import math
import os

import numpy as np
import torch

KEY_BYTES = 32  # ChaCha20's key: all of the entropy
SUMMANDS = 4  # a Gaussian of std s is the sum of 4 of std s/2
_WORD_BYTES = 8
_MANTISSA_BITS = 53


def _chacha20(nbytes: int) -> bytes:
    """``nbytes`` of ChaCha20 keystream under a fresh key from the OS.

    The 16-byte nonce is zero (its first 4 bytes are the block counter, starting at 0): a key is
    used for this one stream only, so the nonce need not vary."""
    try:
        from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
    except ImportError:  # pragma: no cover - part of the privacy and dev extras
        raise ValueError("privacy's secure noise needs the cryptography package: pip install 'pfedlora[privacy]'") from None
    encryptor = Cipher(algorithms.ChaCha20(os.urandom(KEY_BYTES), bytes(16)), mode=None).encryptor()
    return encryptor.update(bytes(nbytes))


def secure_uniform(count: int) -> np.ndarray:
    """``count`` float64 uniforms on the open interval (0, 1), each from 53 keystream bits."""
    words = np.frombuffer(_chacha20(count * _WORD_BYTES), dtype="<u8")
    return ((words >> np.uint64(64 - _MANTISSA_BITS)).astype(np.float64) + 0.5) * 2.0 ** -_MANTISSA_BITS


def _standard_normal(count: int) -> np.ndarray:
    """``count`` N(0, 1) draws by Box-Muller: each pair of uniforms gives two independent normals."""
    pairs = (count + 1) // 2
    uniform = secure_uniform(2 * pairs)
    radius = np.sqrt(-2.0 * np.log(uniform[:pairs]))
    angle = (2.0 * math.pi) * uniform[pairs:]
    return np.concatenate([radius * np.cos(angle), radius * np.sin(angle)])[:count]


def secure_gaussian(shape: tuple[int, ...] | torch.Size, std: float) -> torch.Tensor:
    """Float64 N(0, std²) noise of ``shape``: the sum of four keystream Gaussians of std ``std``/2."""
    count = math.prod(shape)
    draws = _standard_normal(SUMMANDS * count).reshape(SUMMANDS, count).sum(axis=0)
    return torch.from_numpy(draws * (std / math.sqrt(SUMMANDS))).reshape(tuple(shape))
