"""Counter-based random numbers per row: every draw is a function of (row seed, step, stream, index).

torch's generators are stateful: the numbers a row receives depend on how many were drawn
before it, so on which other rows share its batch, which of them are still thinking, and
how a run was split over processes. :class:`RowRandom` instead hashes a counter: the
draws of a row at a decode step depend only on that row's seed, the step number, the
consumer's *stream* (mixer, noise, answer sampler...) and the position in the draw. A
seeded row therefore gives the same output alone, in any batch, resumed, or on any
number of processes; and since there is no hidden state, a decode step that draws
numbers compiles to one graph (no generator state to thread through, no host sync).

The hash is Wellons' ``lowbias32`` ("Prospecting for hash functions", 2018, constants
``0x21f0aaad`` / ``0x735a2d97``): a bijective avalanche mix of 32-bit words, evaluated in
int64 arithmetic so that it runs unchanged on every device and under ``torch.compile``.
A row's key is ``H(H(H(seed_lo) + seed_hi) + step)``; a child stream's key is
``H(key + stream)``; draw ``i`` is ``H(key ^ H(i))``. A uniform takes two such words (52
random bits, in float64), so values are exact multiples of ``2^-53`` in ``(0, 1)``, never
0 or 1.

Distributions built on the uniforms: normals by the inverse CDF (``ndtri``), Gumbels by
``-log(-log U)``, categorical draws by inverse CDF over the weights, Gamma draws by
Marsaglia & Tsang's rejection method with a fixed number of vectorised tries (see
:meth:`RowRandom.gamma`).
"""

from __future__ import annotations

import torch

_MASK32 = 0xFFFFFFFF
#: Rejection tries of :meth:`RowRandom.gamma`; all fail with probability below 1e-13 (see there).
GAMMA_TRIES = 10


def _stream_word(stream: int) -> int:
    """The 32-bit word that separates child stream ``stream`` from its parent."""
    return 0x9E3779B9 * (stream + 1) & _MASK32


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """``(x * c) mod 2^32`` for uint32 values held in int64, without int64 overflow."""
    low, high = x & 0xFFFF, x >> 16
    return (low * c + (((high * c) & 0xFFFF) << 16)) & _MASK32


def hash32(x: torch.Tensor) -> torch.Tensor:
    """Wellons' ``lowbias32`` of uint32 values held in an int64 tensor (any shape)."""
    x = x & _MASK32
    x = x ^ (x >> 16)
    x = _mul32(x, 0x21F0AAAD)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x735A2D97)
    return x ^ (x >> 15)


def row_seed(*parts: int) -> int:
    """One int64 seed from several integers (e.g. base seed, problem index, sample index).

    Used to give each (problem, sample) its own stream whatever batch it lands in. Each
    part is reduced mod ``2^64`` first, so any Python integer is accepted.
    """
    state = torch.zeros((), dtype=torch.int64)
    for part in parts:
        part = int(part) % (1 << 64)
        for word in (part & _MASK32, part >> 32):
            state = hash32(state + word)
    high = hash32(state + 0x9E3779B9)
    return int(high) << 31 | int(state) >> 1  # < 2^63: a valid int64


class RowRandom:
    """Random draws for a batch of rows, each a function of (row seed, step, stream, index).

    Args:
        seeds: ``[B]`` int64 row seeds (any values).
        step: The decode step (an int or a 0-dim int64 tensor: a tensor keeps a compiled
            step from recompiling as it advances).

    Example:
        >>> rng = RowRandom(torch.tensor([7, 8]), step=3)
        >>> u = rng.child(1).uniform(5)   # [2, 5] float64, row 0 identical in any batch
    """

    def __init__(self, seeds: torch.Tensor, step: int | torch.Tensor = 0) -> None:
        seeds = torch.as_tensor(seeds, dtype=torch.int64)
        if seeds.dim() != 1:
            raise ValueError(f"seeds must be a 1-D tensor with one seed per row, got shape {tuple(seeds.shape)}")
        # The step as a tensor: a compiled function taking this object must not guard on its value.
        self._seeds, self._step, self._streams = seeds, torch.as_tensor(step, dtype=torch.int64), ()
        self._key: torch.Tensor | None = None

    @property
    def key(self) -> torch.Tensor:
        """The rows' ``[B]`` keys (uint32 values in int64), computed on first use: a step that draws
        nothing (greedy, top-k Soft Thinking without noise) costs no hashing."""
        if self._key is None:
            seeds = self._seeds
            key = hash32(hash32(seeds & _MASK32) + ((seeds >> 32) & _MASK32))
            key = hash32(key + self._step.to(seeds.device))
            for stream in self._streams:
                key = hash32(key + _stream_word(stream))
            self._key = key
        return self._key

    @classmethod
    def from_key(cls, key: torch.Tensor) -> RowRandom:
        """A generator with the given ``[B]`` keys (already derived from seeds, step and streams)."""
        out = cls.__new__(cls)
        out._seeds, out._step, out._streams, out._key = None, None, (), key
        return out

    @classmethod
    def from_torch(cls, batch: int, device: torch.device | str | None = None) -> RowRandom:
        """Fresh row seeds drawn from torch's global generator (``torch.manual_seed`` reproduces them)."""
        seeds = torch.randint(0, 2**62, (batch,), dtype=torch.int64)
        return cls(seeds.to(device))

    @property
    def batch_size(self) -> int:
        return (self._seeds if self._key is None else self._key).shape[0]

    def child(self, stream: int) -> RowRandom:
        """An independent stream for one consumer (mixer, noise, answer sampler...)."""
        if self._key is not None:
            return RowRandom.from_key(hash32(self._key + _stream_word(stream)))
        out = RowRandom.__new__(RowRandom)
        out._seeds, out._step, out._streams, out._key = self._seeds, self._step, (*self._streams, stream), None
        return out

    def _words(self, n: int) -> torch.Tensor:
        counter = hash32(torch.arange(n, dtype=torch.int64, device=self.key.device))
        return hash32(self.key[:, None] ^ counter)  # [B, n] uint32 in int64

    def uniform(self, *shape: int) -> torch.Tensor:
        """Uniform draws in ``(0, 1)``, ``[B, *shape]`` float64 (52 random bits each)."""
        n = 1
        for size in shape:
            n *= size
        words = self._words(2 * n)
        bits = (words[:, :n] << 20) | (words[:, n:] >> 12)  # 52 bits
        return ((2 * bits + 1).double() * 2.0**-53).reshape(self.batch_size, *shape)

    def normal(self, *shape: int) -> torch.Tensor:
        """Standard normal draws, ``[B, *shape]`` float64 (inverse CDF of :meth:`uniform`)."""
        return torch.special.ndtri(self.uniform(*shape))

    def gumbel(self, *shape: int) -> torch.Tensor:
        """Standard Gumbel draws ``-log(-log U)``, ``[B, *shape]`` float64."""
        return -torch.log(-torch.log(self.uniform(*shape)))

    def categorical(self, weights: torch.Tensor, n: int = 1) -> torch.Tensor:
        """``n`` independent indices per row, each drawn with probability proportional to ``weights``
        ``[B, C]`` (>= 0): ``[B, n]`` (with replacement).

        Inverse CDF in float64: the first index whose cumulative weight exceeds ``U * total``.
        An index of zero weight is never drawn; a row with no weight gives index 0. The
        draws are :meth:`uniform` ``(n)``, so ``n = 1`` is the single draw of the same stream.
        """
        cdf = torch.cumsum(weights.double(), dim=-1)
        target = self.uniform(n) * cdf[:, -1:]  # [B, n]
        index = (cdf[:, None, :] <= target[:, :, None]).sum(-1)
        # Rounding can put the target on the total: fall back to the last index with weight.
        positive = weights > 0
        last = weights.shape[-1] - 1 - positive.flip(-1).int().argmax(-1, keepdim=True)
        return torch.minimum(index, last)

    def gamma(self, shape: torch.Tensor) -> torch.Tensor:
        """``Gamma(shape, 1)`` draws for shapes ``>= 1``, ``[B, *]`` float64, returned as their logarithm.

        Marsaglia & Tsang (2000, "A simple method for generating gamma variables", ACM TOMS
        26(3)): with ``d = shape - 1/3``, ``c = 1 / sqrt(9 d)``, ``x ~ N(0, 1)``,
        ``v = (1 + c x)^3``, accept ``d v`` when ``v > 0`` and
        ``log U < x^2 / 2 + d - d v + d log v``. For ``shape >= 1`` a try is accepted with
        probability above 0.95, so :data:`GAMMA_TRIES` = 10 tries taken at once all fail
        with probability below ``0.05^10 ~ 1e-13``; the first accepted try is returned
        (then the last one, which is still a positive number near the mode).

        Raises nothing; shapes below 1 give a biased draw: boost them first,
        ``Gamma(a) = Gamma(a + 1) U^(1/a)``, as :class:`~softtok.soft.DirichletMixer` does.
        """
        shape = shape.double()
        tries = GAMMA_TRIES
        x = self.child(0).normal(*shape.shape[1:], tries)  # [B, ..., tries]
        log_u = torch.log(self.child(1).uniform(*shape.shape[1:], tries))
        d = (shape - 1.0 / 3.0)[..., None]
        c = torch.rsqrt(9.0 * d)
        base = 1.0 + c * x
        positive = base > 0
        log_v = 3.0 * torch.log(torch.where(positive, base, 1.0))
        v = torch.exp(log_v)
        accept = positive & (log_u < 0.5 * x * x + d - d * v + d * log_v)
        accept[..., -1] = True  # the fallback: the last try
        first = accept.int().argmax(-1, keepdim=True)  # the first accepted try
        log_v = torch.where(positive, log_v, torch.log(torch.full_like(log_v, 1e-3)))
        return (torch.log(d) + log_v).gather(-1, first)[..., 0]
