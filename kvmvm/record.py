"""`@record`: the part of `@dataclass` kvmvm uses, for modules on `kvmvm boot`'s start-up path.

`import dataclasses` pulls in inspect, ast, dis and enum: about 25 ms, a third of a tiny
guest's whole boot. A record gets __init__ (positional or keyword, defaults, `Factory`
defaults), __repr__, __eq__, `asdict()`, and with frozen=True, immutability and __hash__.
"""

from __future__ import annotations


class Factory:
    """A default made fresh for each instance, like dataclasses.field(default_factory=...)."""

    __slots__ = ("make",)

    def __init__(self, make):
        self.make = make


def record(cls=None, *, frozen: bool = False):
    if cls is None:
        return lambda c: record(c, frozen=frozen)
    names: list[str] = []
    for klass in reversed(cls.__mro__):
        for n in klass.__dict__.get("__annotations__", {}):
            if n not in names:
                names.append(n)
    defaults = {}
    for klass in cls.__mro__:
        for n in names:
            if n in klass.__dict__ and n not in defaults:
                defaults[n] = klass.__dict__[n]
    setter = object.__setattr__

    def __init__(self, *args, **kw):
        if len(args) > len(names):
            raise TypeError(f"{cls.__name__}() takes {len(names)} arguments, got {len(args)}")
        for n, v in zip(names, args):
            setter(self, n, v)
        for n in names[len(args):]:
            if n in kw:
                setter(self, n, kw.pop(n))
            elif n in defaults:
                d = defaults[n]
                setter(self, n, d.make() if isinstance(d, Factory) else d)
            else:
                raise TypeError(f"{cls.__name__}() missing argument {n!r}")
        if kw:
            raise TypeError(f"{cls.__name__}() got unexpected arguments {sorted(kw)}")
        post = getattr(self, "__post_init__", None)
        if post:
            post()

    def __repr__(self):
        return f"{cls.__name__}(" + ", ".join(f"{n}={getattr(self, n)!r}" for n in names) + ")"

    def __eq__(self, other):
        if type(other) is not type(self):
            return NotImplemented
        return all(getattr(self, n) == getattr(other, n) for n in names)

    def asdict(self) -> dict:
        return {n: getattr(self, n) for n in names}

    cls.__init__ = __init__
    cls.__repr__ = __repr__
    cls.__eq__ = __eq__
    cls.asdict = asdict
    cls._fields = tuple(names)
    for n, d in defaults.items():
        if isinstance(d, Factory):
            delattr(cls, n) if n in cls.__dict__ else None
    if frozen:
        def __setattr__(self, n, v):
            raise AttributeError(f"{cls.__name__} is frozen: cannot set {n}")

        cls.__setattr__ = __setattr__
        cls.__hash__ = lambda self: hash(tuple(getattr(self, n) for n in names))
    else:
        cls.__hash__ = None
    return cls
