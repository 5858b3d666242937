"""btc-quant's ``njit`` compiles a callee once per argument type, not once per constant passed."""

from __future__ import annotations

import numba
import numpy as np
from numba import literally

from btc_quant.core.compiled import PlainTypeDispatcher, njit


def _pair(jit):
    @jit(cache=False)
    def callee(x, kind, again=False):
        return x * kind + (1.0 if again else 0.0)

    @jit(cache=False)
    def caller(x):
        return callee(x, 1) + callee(x, 2) + callee(x, 3, True) + callee(x, 4, again=False)

    return callee, caller


def test_constants_passed_from_compiled_code_share_one_specialisation():
    callee, caller = _pair(njit)
    assert isinstance(callee, PlainTypeDispatcher)
    assert caller(2.0) == 2.0 + 4.0 + 7.0 + 8.0
    assert [str(s) for s in callee.signatures] == ["(float64, int64, bool)"]
    # numba's own njit compiles the callee once per literal and per omitted default
    plain_callee, plain_caller = _pair(numba.njit)
    assert plain_caller(2.0) == caller(2.0)
    assert len(plain_callee.signatures) >= 4


def test_a_callee_that_needs_a_literal_still_gets_it():
    @njit
    def pick(t, i):
        return t[literally(i)]

    @njit
    def caller(a):
        t = (a, a.shape[0])
        return pick(t, 1)

    assert caller(np.zeros(3)) == 3
