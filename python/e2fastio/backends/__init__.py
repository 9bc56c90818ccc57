"""The Earth2Studio-facing classes, one module each: Earth2Studio 0.19's arguments, defaults, errors
and mapping methods on top, the write path (:mod:`e2fastio._write`) and the stores
(:mod:`e2fastio.stores`) underneath. Import them from :mod:`e2fastio`."""
