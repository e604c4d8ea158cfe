"""The model seam's *rebuild reference*: how a model is named so it can be built again, by anyone, later.

A reference is one string, in one of three forms:

- a zoo name (`lenet5`, `mobilenet_v2`, ...: `nncompress.architectures.MODELS`);
- `package.module:factory`, an importable module and a callable in it (`torchvision.models:resnet18`,
  `mypkg.nets:build`), as in setuptools entry points;
- `path/to/file.py:factory`, a Python file imported by path (`importlib.util.spec_from_file_location`).

The factory is called with the keyword arguments it declares among those offered (`in_shape`, `num_classes`
for a dataset, any others the caller passes), so `def build(): ...`, `def build(num_classes=10): ...` and
`def build(**kw): ...` all work. It must return an `nn.Module`. Every failure (module not importable, no such
attribute, not callable, a required argument nobody offers, a return value that is not a module) is one
UserError naming the reference.

Anchor: Hugging Face persists a model as weights by name plus a config naming its class
(`save_pretrained` / `from_pretrained`), never as a pickle; this reference plays the config's part.
Importing and calling the code a reference names runs that code, so a reference read from a *file* (a .nnc's
metadata) is used only when the caller passes the same kind of reference themselves (like transformers'
`trust_remote_code`); zoo names are always safe to rebuild.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nncompress.core.errors import UserError

_DOTTED = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


def is_factory_ref(ref: str) -> bool:
    """Whether `ref` has the `module:factory` or `file.py:factory` form (rather than a zoo name)."""
    return isinstance(ref, str) and ":" in ref


def split_ref(ref: str) -> tuple[str, str]:
    """(module or file part, attribute path) of a factory reference; UserError when it is malformed."""
    target, _, attr = ref.rpartition(":")
    if not target or not _DOTTED.match(attr):
        raise UserError(f"model reference '{ref}' is malformed: use a zoo name, package.module:factory or path/to/file.py:factory")
    return target, attr


def _is_file_target(target: str) -> bool:
    return target.endswith(".py") or "/" in target or "\\" in target


def _import_file(path_text: str, ref: str):
    path = Path(path_text).expanduser()
    if not path.is_file():
        raise UserError(f"model reference '{ref}': file {path} not found (give a path to a .py file, relative to the working folder)")
    resolved = path.resolve()
    name = f"nncompress_user_{re.sub(r'[^0-9A-Za-z_]', '_', resolved.stem)}_{hashlib.sha1(str(resolved).encode()).hexdigest()[:10]}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, resolved)
    if spec is None or spec.loader is None:
        raise UserError(f"model reference '{ref}': cannot import {path} as Python")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling-free relative lookups need the module registered
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # noqa: BLE001 - the user's file raised while importing
        del sys.modules[name]
        raise UserError(f"model reference '{ref}': importing {path} failed ({type(e).__name__}: {_first_line(e)})") from None
    return module


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return (text.splitlines()[0][:200]) if text else type(e).__name__


def _import_module(target: str, ref: str):
    if not _DOTTED.match(target):
        raise UserError(f"model reference '{ref}': '{target}' is neither a dotted module name nor a .py file path")
    try:
        return importlib.import_module(target)
    except ModuleNotFoundError as e:
        raise UserError(f"model reference '{ref}': module '{e.name or target}' is not importable (is it installed, "
                        "or on PYTHONPATH? a file needs its path, e.g. ./nets.py:build)") from None
    except Exception as e:  # noqa: BLE001 - the user's module raised while importing
        raise UserError(f"model reference '{ref}': importing '{target}' failed ({type(e).__name__}: {_first_line(e)})") from None


def resolve_factory(ref: str) -> Callable[..., Any]:
    """The callable a `module:factory` / `file.py:factory` reference names (imported, not called)."""
    target, attr = split_ref(ref)
    module = _import_file(target, ref) if _is_file_target(target) else _import_module(target, ref)
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            where = getattr(module, "__file__", None) or target
            raise UserError(f"model reference '{ref}': {where} has no attribute '{attr}'")
        obj = getattr(obj, part)
    if not callable(obj):
        raise UserError(f"model reference '{ref}': '{attr}' is a {type(obj).__name__}, not a callable that builds a model")
    return obj


def call_factory(factory: Callable[..., Any], ref: str, offered: dict[str, Any]) -> Any:
    """Call `factory` with the offered keyword arguments it declares (all of them if it takes **kwargs)."""
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):  # a builtin or C callable: no introspection, offer nothing
        params = {}
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    kwargs = {k: v for k, v in offered.items() if takes_any or k in params}
    missing = [n for n, p in params.items() if p.default is inspect.Parameter.empty and n not in kwargs
               and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    if missing:
        raise UserError(f"model reference '{ref}': the factory needs argument(s) {', '.join(missing)} that nncompress does not "
                        f"know (it offers {', '.join(offered) or 'none'}); give them defaults or wrap the factory")
    try:
        return factory(**kwargs)
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - the user's factory raised
        raise UserError(f"model reference '{ref}': calling the factory failed ({type(e).__name__}: {_first_line(e)})") from None


def resolve_model(ref: str, **kwargs: Any):
    """Build the model `ref` names (a zoo name, `package.module:factory` or `path/to/file.py:factory`).

    Zoo models take `in_shape` and `num_classes` (and their own keyword arguments); a factory gets the keyword
    arguments it declares among `kwargs`. Returns an `nn.Module`; one UserError naming the reference otherwise.
    """
    from torch import nn

    if not isinstance(ref, str) or not ref.strip():
        raise UserError(f"model reference must be a non-empty string, got {ref!r}")
    ref = ref.strip()
    if not is_factory_ref(ref):
        from nncompress.architectures import MODELS

        if ref not in MODELS:
            raise UserError(f"unknown model '{ref}': choose one of {', '.join(sorted(MODELS))} (see 'nncompress zoo list'), "
                            "or name your own as package.module:factory or path/to/file.py:factory")
        kwargs = {k: tuple(v) if k == "in_shape" else v for k, v in kwargs.items()}
        return MODELS[ref](**kwargs)
    model = call_factory(resolve_factory(ref), ref, kwargs)
    if not isinstance(model, nn.Module):
        raise UserError(f"model reference '{ref}': the factory returned a {type(model).__name__}, not a torch.nn.Module")
    return model


def check_model_ref(ref: str, option: str = "--model") -> str:
    """Check a reference without building anything: a zoo name exists, or a factory's module imports and names a
    callable. For option parsing, before any data loads; the option name leads the message."""
    try:
        if is_factory_ref(ref):
            resolve_factory(ref)
        else:
            from nncompress.architectures import MODELS

            if ref not in MODELS:
                raise UserError(f"unknown model '{ref}': choose one of {', '.join(sorted(MODELS))} (see 'nncompress zoo list'), "
                                "or name your own as package.module:factory or path/to/file.py:factory")
    except UserError as e:
        raise UserError(f"{option}: {e}") from None
    return ref
