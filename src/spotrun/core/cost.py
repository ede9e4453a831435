"""Money and time arithmetic: the price table, the effective saving, the Young/Daly interval."""

from __future__ import annotations

import math
from dataclasses import dataclass

from omegaconf import OmegaConf

from spotrun.core.paths import PRICES


@dataclass(frozen=True)
class Price:
    spot: float
    on_demand: float

    @property
    def discount(self) -> float:
        return 1.0 - self.spot / self.on_demand


def load_prices(path: str = PRICES) -> dict:
    return OmegaConf.to_container(OmegaConf.load(path), resolve=True)


def price_for(table: dict, cloud: str, accelerator: str) -> Price:
    """The $/h of one `accelerator` on `cloud`; a KeyError names what the table holds instead."""
    clouds = table["clouds"]
    if cloud not in clouds:
        raise KeyError(f"cloud {cloud!r} not in the price table; it has {', '.join(clouds)}")
    prices = clouds[cloud]["prices"]
    if accelerator not in prices:
        raise KeyError(f"{accelerator!r} not priced for {cloud}; the table has {', '.join(prices)}")
    return Price(**prices[accelerator])


def effective_saving(
    price: Price, billed_h: float, uninterrupted_h: float, on_demand_h: float = 0.0
) -> float:
    """1 - (cost of everything billed, overhead included: `billed_h` on spot, `on_demand_h` after a
    fallback to on-demand) / (on-demand cost of an uninterrupted run). A 70 % discount with 10 % of
    the compute lost saves about 67 %."""
    paid = price.spot * billed_h + price.on_demand * on_demand_h
    return 1.0 - paid / (price.on_demand * uninterrupted_h)


def young_daly(cost_s: float, mtbr_s: float, lo: float, hi: float) -> float:
    """Checkpoint interval T = sqrt(2 C M) (Young 1974, Daly 2006), clamped to [lo, hi]: C is what
    one checkpoint costs the job (seconds blocked), M the mean time between reclaims."""
    return min(hi, max(lo, math.sqrt(2.0 * max(cost_s, 0.0) * mtbr_s)))


class CheckpointInterval:
    """The time-based checkpoint interval: fixed seconds, or "auto" (Young/Daly from this run's
    measured blocking cost, re-evaluated after every save)."""

    def __init__(self, every_seconds, lo: float, hi: float, mtbr_s: float):
        self.auto = every_seconds == "auto"
        self.lo, self.hi, self.mtbr_s = lo, hi, mtbr_s
        self.costs: list[float] = []
        self.seconds = lo if self.auto else float(every_seconds)  # no measurement yet: be careful

    def observe(self, blocked_s: float) -> bool:
        """Record one save's blocking cost; True when the interval moved by more than 10 %."""
        if not self.auto:
            return False
        self.costs.append(blocked_s)
        recent = self.costs[-5:]
        new = young_daly(sum(recent) / len(recent), self.mtbr_s, self.lo, self.hi)
        moved = abs(new - self.seconds) > 0.1 * self.seconds
        self.seconds = new
        return moved
