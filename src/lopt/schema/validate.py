"""Reading params.yaml (YAML 1.2 numbers), validating blocks and the whole file, and the error messages: each
names section.profile.key, the bad value, what is allowed and an example fix."""


import difflib
import re
import sys
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Mapping, Sequence, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from .sections import SECTIONS
from .values import PROFILES, SchemaError
# ------------------------------------------------------------------------------------------- YAML


class Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):
    """PyYAML's safe loader with YAML 1.2 floats: ``1e-3``, ``1e3``, ``1.0e8`` are numbers, not strings. It parses with
    libyaml where PyYAML was built with it (the same documents, ~7x faster: the pure-Python parser took ~0.2 s of
    every notebook's start, reading params.yaml twice), else with the pure-Python parser."""


Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
               r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
    list("-+0123456789."),
)


def read_yaml(path: str | Path) -> dict:
    """The contents of a YAML file, numbers read as YAML 1.2 does (ints stay ints: the int rule comes first)."""
    with open(path) as f:
        return yaml.load(f, Loader=Loader) or {}


# ------------------------------------------------------------------------------------------- messages


def _show(v: Any) -> str:
    text = "null" if v is None else str(v).lower() if isinstance(v, bool) else repr(v)
    return text if len(text) <= 80 else text[:77] + "..."


def _strip(tp: Any) -> Any:
    while get_origin(tp) is Annotated:
        tp = get_args(tp)[0]
    if get_origin(tp) in (Union, UnionType):
        tp = next(a for a in get_args(tp) if a is not type(None))
        return _strip(tp)
    return tp


def _model_at(model: type[BaseModel], loc: Sequence[Any]) -> type[BaseModel] | None:
    """The model class at ``loc`` inside ``model`` (None when the location is not a model)."""
    tp: Any = model
    for item in loc:
        tp = _strip(tp)
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            field = tp.model_fields.get(item) if isinstance(item, str) else None
            if field is None:
                return None
            tp = field.annotation
        elif get_origin(tp) in (dict, list):
            tp = get_args(tp)[-1]
        else:
            return None
    tp = _strip(tp)
    return tp if isinstance(tp, type) and issubclass(tp, BaseModel) else None


def _dotted(prefix: str, loc: Sequence[Any]) -> str:
    path = prefix
    for item in loc:
        path += f"[{item}]" if isinstance(item, int) else "" if item == "[key]" else f".{item}"
    return path


def _example(key: str, example: Any) -> str:
    if isinstance(example, list):
        example = "[" + ", ".join(str(e) for e in example) + "]"
    return f"{key}: {example}"


def _messages(prefix: str, model: type[BaseModel], err: ValidationError) -> list[str]:
    out, errors = [], err.errors()
    unknown = {(e["loc"][:-1], e["loc"][-1]) for e in errors if e["type"] == "extra_forbidden"}
    for e in errors:
        loc, kind, ctx = e["loc"], e["type"], e.get("ctx") or {}
        path = _dotted(prefix, loc)
        keys = [k for k in loc if isinstance(k, str) and k != "[key]"]
        leaf = keys[-1] if keys else prefix.rsplit(".", 1)[-1]
        if kind == "lopt" and loc and loc[-1] == "[key]":
            out.append(f"{path}: unknown name {_show(e['input'])}; this key must be {ctx['allowed']}")
        elif kind == "lopt":
            example = _example(leaf, [ctx["example"]] if loc and isinstance(loc[-1], int) else ctx["example"])
            out.append(f"{path} = {_show(e['input'])}: must be {ctx['allowed']}, e.g. {example}")
        elif kind == "lopt_rule":
            out.append(f"{_dotted(prefix, (*loc, *ctx['key'].split('.')))}: {ctx['message']}")
        elif kind == "extra_forbidden":
            parent = _model_at(model, loc[:-1])
            allowed = list(parent.model_fields) if parent else []
            close = difflib.get_close_matches(str(loc[-1]), allowed + ["seed"] * (len(loc) == 1), n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            if close == ["seed"]:
                hint = "; did you mean the top-level 'seed'? (one seed for every notebook, at the top of params.yaml)"
            out.append(f"{path}: unknown key {loc[-1]!r}; allowed keys: {', '.join(allowed)}{hint}")
        elif kind == "missing":
            renamed = [str(k) for parent, k in unknown if parent == loc[:-1]]
            close = difflib.get_close_matches(str(loc[-1]), renamed, n=1)
            hint = f"renamed to {close[0]!r}? " if close else ""
            out.append(f"{path}: missing key {loc[-1]!r} ({hint}every profile of the section needs it)")
        elif kind in ("dict_type", "model_type", "model_attributes_type"):
            sub = _model_at(model, loc)
            what = f"a mapping with keys {', '.join(sub.model_fields)}" if sub else "a mapping of keys to values"
            out.append(f"{path} = {_show(e['input'])}: must be {what}, e.g. {leaf}: {{...}}")
        elif kind == "bool_type":
            out.append(f"{path} = {_show(e['input'])}: must be true or false, e.g. {leaf}: false")
        else:
            out.append(f"{path} = {_show(e.get('input'))}: {e['msg']}")
    return out


# ------------------------------------------------------------------------------------------- validation


def _like(raw: Any, new: Any) -> Any:
    """``new`` (validated) in the key order and shape of ``raw``."""
    if isinstance(raw, Mapping) and isinstance(new, dict):
        return {**{k: _like(raw[k], new[k]) for k in raw if k in new}, **{k: v for k, v in new.items() if k not in raw}}
    if isinstance(raw, list) and isinstance(new, list) and len(raw) == len(new):
        return [_like(a, b) for a, b in zip(raw, new)]
    return new


def _known(name: str, known: Sequence[str], what: str) -> str:
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return f"unknown {what} {name!r}; known: {', '.join(known)}" + (f"; did you mean {close[0]!r}?" if close else "")


def validate_block(section: str, profile: str, values: Mapping[str, Any]) -> dict:
    """The validated values of one profile block (plain Python, the input's shape); raises :class:`SchemaError`."""
    if section not in SECTIONS:
        raise SchemaError([_known(section, list(SECTIONS), "section")])
    if profile not in PROFILES:
        raise SchemaError([f"{section}: " + _known(profile, PROFILES, "profile")])
    if not isinstance(values, Mapping):
        raise SchemaError([f"{section}.{profile} = {_show(values)}: must be a mapping of keys to values"])
    model = SECTIONS[section]
    try:
        validated = model.model_validate(dict(values))
    except ValidationError as err:
        raise SchemaError(_messages(f"{section}.{profile}", model, err)) from None
    return _like(values, validated.model_dump(exclude_unset=True))


def _cross_sections(ok: dict[tuple[str, str], dict]) -> list[str]:
    """Rules between sections of one profile: what notebooks 06-07 and 11-14 read from 05's and 10's outputs."""
    errors = []
    for p in PROFILES:
        nb05, nb10 = ok.get(("nb05", p)), ok.get(("nb10", p))
        for s in ("nb06", "nb07"):
            if nb05 and (s, p) in ok and nb05["horizon"] % ok[s, p]["eval_every"]:
                errors.append(f"{s}.{p}.eval_every = {ok[s, p]['eval_every']} must divide nb05.{p}.horizon = "
                              f"{nb05['horizon']} (notebook {s[2:]} runs notebook 05's optimizers for that many steps)")
        for s in ("nb11", "nb12", "nb13", "nb14"):
            if nb10 and (s, p) in ok:
                need = [t for t in ok[s, p]["tasks"] + (["linear_regression"] if s == "nb11" else [])
                        if t not in nb10["tasks"]]
                if need:
                    errors.append(f"{s}.{p}.tasks: notebook 10 trains no GRU for {sorted(set(need))} at this profile "
                                  f"(nb10.{p}.tasks has {', '.join(nb10['tasks'])}); add them there or remove "
                                  "them here")
    return errors


def validate_file(path: str | Path) -> list[str]:
    """Validate the whole file, read as :func:`read_yaml` (YAML 1.2 numbers, as ``lopt.config.load`` reads it): the
    top level, every section at every profile, the rules between sections. Returns the section names; raises one
    :class:`SchemaError` listing every problem found."""
    return validate_params(read_yaml(path))


def validate_params(params: Mapping[str, Any]) -> list[str]:
    """:func:`validate_file` on the contents of a params file, already read."""
    if not isinstance(params, Mapping):
        raise SchemaError([f"params = {_show(params)}: must be a mapping of profile, seed and sections nbNN"])
    errors: list[str] = []
    if params.get("profile") not in PROFILES:
        errors.append(f"profile = {_show(params.get('profile'))}: must be one of {', '.join(PROFILES)}, "
                      "e.g. profile: cpu")
    seed = params.get("seed")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        errors.append(f"seed = {_show(seed)}: must be an integer >= 0, e.g. seed: 0")
    for key, value in params.items():
        if key in SECTIONS and not isinstance(value, dict):
            errors.append(f"{key} = {_show(value)}: a section must be a mapping of the profiles smoke, cpu, gpu")
        elif isinstance(value, dict) and key not in SECTIONS:
            errors.append(_known(str(key), list(SECTIONS), "section"))
        elif not isinstance(value, dict) and key not in ("profile", "seed", *SECTIONS):
            errors.append(_known(str(key), ["profile", "seed"], "top-level key") + " (the others are sections nbNN)")
    errors += [f"section {s!r} is missing: every notebook has one" for s in SECTIONS if s not in params]
    ok: dict[tuple[str, str], dict] = {}
    for section in (s for s in SECTIONS if isinstance(params.get(s), dict)):
        block = params[section]
        errors += [f"{section}: missing profile {p!r} (every section needs smoke, cpu and gpu)"
                   for p in PROFILES if p not in block]
        errors += [f"{section}: " + _known(str(p), PROFILES, "profile") for p in block if p not in PROFILES]
        for p in (p for p in PROFILES if p in block):
            try:
                ok[section, p] = validate_block(section, p, block[p] or {})
            except SchemaError as err:
                errors += err.errors
    errors += _cross_sections(ok)
    if errors:
        raise SchemaError(errors)
    return [s for s in params if s in SECTIONS]


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m lopt.schema [params.yaml]``: 0 and one line when valid, else 2 and every error on stderr."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args:
        path = Path(args[0])
    else:
        from ..config import repo_root

        path = repo_root() / "params.yaml"
    try:
        sections = validate_file(path)
    except (SchemaError, OSError, yaml.YAMLError) as err:
        body = "\n".join(f"  - {e}" for e in err.errors) if isinstance(err, SchemaError) else f"  - {err}"
        print(f"{path.name} is not valid, nothing was run:\n{body}", file=sys.stderr)
        return 2
    print(f"{path.name}: valid ({len(sections)} sections)")
    return 0


