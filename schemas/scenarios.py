"""Traffic scenarios in the original grammar: token counts of each request's prompt and answer.

- `D(in,out)`            every request has exactly `in` input and `out` output tokens
- `N(mi,si)/(mo,so)`     normal distributions (mean, stddev) for input and output tokens
- `U(a,b)/(c,d)`         uniform integer ranges [a, b] for input and [c, d] for output tokens
"""

from __future__ import annotations

import random
import re

import msgspec


class ScenarioError(ValueError):
    pass


class Scenario(msgspec.Struct, frozen=True):
    kind: str  # "D" | "N" | "U"
    input: tuple[float, float]  # D: (n, n); N: (mean, stddev); U: (low, high)
    output: tuple[float, float]
    text: str = ""

    def sample(self, rng: random.Random) -> tuple[int, int]:
        """One request's (input_tokens, output_tokens), each at least 1."""
        return self._draw(self.input, rng), self._draw(self.output, rng)

    def _draw(self, p: tuple[float, float], rng: random.Random) -> int:
        if self.kind == "D":
            v = p[0]
        elif self.kind == "N":
            v = rng.gauss(p[0], p[1])
        else:
            v = rng.randint(int(p[0]), int(p[1]))
        return max(1, int(round(v)))

    @property
    def mean_input(self) -> float:
        return (self.input[0] + self.input[1]) / 2 if self.kind == "U" else self.input[0]

    @property
    def mean_output(self) -> float:
        return (self.output[0] + self.output[1]) / 2 if self.kind == "U" else self.output[0]


_NUM = r"\s*(\d+(?:\.\d+)?)\s*"
_PAIR = rf"\({_NUM},{_NUM}\)"
_D = re.compile(rf"^D{_PAIR}$")
_NU = re.compile(rf"^([NU]){_PAIR}/{_PAIR}$")


def parse_scenario(text: str) -> Scenario:
    s = text.strip()
    if m := _D.match(s):
        i, o = float(m[1]), float(m[2])
        if i < 1 or o < 1:
            raise ScenarioError(f"`{text}`: token counts must be at least 1")
        return Scenario("D", (i, i), (o, o), s)
    if m := _NU.match(s):
        kind, a, b, c, d = m[1], float(m[2]), float(m[3]), float(m[4]), float(m[5])
        if kind == "U" and (a > b or c > d or a < 1 or c < 1):
            raise ScenarioError(f"`{text}`: U(a,b)/(c,d) needs 1 <= a <= b and 1 <= c <= d")
        if kind == "N" and (a < 1 or c < 1):
            raise ScenarioError(f"`{text}`: N(mean,stddev)/(mean,stddev) needs means of at least 1")
        return Scenario(kind, (a, b), (c, d), s)
    raise ScenarioError(
        f"`{text}` is not a scenario; write D(in,out), N(mean_in,sd_in)/(mean_out,sd_out) or U(lo_in,hi_in)/(lo_out,hi_out)"
    )
