"""``njit`` for btc-quant's compiled code: one machine-code version per argument *type*.

numba compiles a jitted function once per distinct signature it is called with. Called from other
compiled code, a constant argument (``_new_order(S, O, K_TP, ...)``, ``again=True``, an omitted
default) is typed as a *literal* (``Literal[int](3)``, ``Omitted(False)``), so every call site with
a different constant compiles the callee, and everything it calls, once more. Measured on the first
``quant run strategy=maker_vol broker=sim`` (``bench/RESULTS.md``, "First hour"): 84 compilations
of 49 functions, 27.6 s of CPU; with literal arguments typed as their plain types: 62 compilations,
18.9 s, the same fills and figures. LLVM still sees the constants after inlining.

A callee that really needs a literal (``numba.literally``, a tuple index) still gets one: when
typing with the plain types fails, the call is typed as numba would have typed it.
"""

from __future__ import annotations

from numba import njit as _numba_njit
from numba import typeof
from numba.core import errors, types
from numba.core.registry import CPUDispatcher


def _plain(argtype):
    """The type a compiled callee is specialised for: literals as their plain type, an omitted
    default as the type of its value."""
    if isinstance(argtype, types.Omitted):
        try:
            return typeof(argtype.value)
        except ValueError:  # a default numba cannot type as a value (e.g. a dtype): keep it
            return argtype
    return types.unliteral(argtype)


class PlainTypeDispatcher(CPUDispatcher):
    """A CPU dispatcher that, called from compiled code, compiles for the plain argument types."""

    def get_call_template(self, args, kws):
        _, folded = self._compiler.fold_argument_types(args, kws)
        plain = tuple(_plain(a) for a in folded)
        if plain != tuple(folded):
            try:
                return super().get_call_template(plain, {})
            except (errors.TypingError, errors.ForceLiteralArg):  # the callee needs a literal after all
                pass
        return super().get_call_template(args, kws)


def njit(*args, **options):
    """``numba.njit`` with the options it takes (``cache``, ``nogil``, ``inline``, ...), returning
    a :class:`PlainTypeDispatcher`: ``@njit``, ``@njit(cache=True)`` or ``njit(**options)(fn)``."""
    if args and callable(args[0]) and not options and len(args) == 1:
        return _plain_dispatcher(_numba_njit(args[0]))
    jit = _numba_njit(*args, **options)
    return lambda fn: _plain_dispatcher(jit(fn))


def _plain_dispatcher(dispatcher):
    if type(dispatcher) is CPUDispatcher:  # numba's own class, nothing set on it but its state
        dispatcher.__class__ = PlainTypeDispatcher
    return dispatcher
