"""The recipe file: YAML that schedules compression methods over a training run (the Distiller idea).

    model: lenet300            # a name from the zoo
    data: digits               # digits, mnist5k or a path to an .npz with x and y
    pretrain: {epochs: 3}      # dense training first, unless `weights` names a trained .safetensors
    training: {epochs: 6, lr: 0.02}
    lr_schedule: {kind: cosine}
    policies:
      - {method: agp, final_sparsity: 0.9, start: 0, end: 4, frequency: 1}
      - {method: qat, weight_bits: 8, start: 4}

A policy is active for `start <= t < end` (t in epochs, or steps with `unit: step`; no `end` means to the
end of training). Validation is pydantic plus schedule checks (`check_schedule`); every error names the
field and the YAML line it comes from.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from nncompress.core.errors import UserError

Fraction = Annotated[float, Field(ge=0.0, lt=1.0)]
PerLayerSparsity = Union[Fraction, dict[str, Fraction]]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=False)


class Data(_Strict):
    name: str = "digits"
    test_fraction: float = Field(0.2, gt=0.0, lt=1.0)
    train_samples: int | None = Field(None, ge=1, description="use only the first n training samples (quick runs)")
    test_samples: int | None = Field(None, ge=1)


class Training(_Strict):
    epochs: int = Field(ge=1)
    lr: float = Field(0.02, gt=0.0)
    optimizer: Literal["sgd", "adam"] = "sgd"
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    weight_decay: float = Field(0.0, ge=0.0)
    batch_size: int = Field(64, ge=1)


class Pretrain(_Strict):
    epochs: int = Field(0, ge=0)
    lr: float = Field(0.05, gt=0.0)


class LRSchedule(_Strict):
    """lr(t) over the whole run, t in steps: constant; cosine to min_lr; step (×gamma at each milestone
    epoch); exponential (×gamma per epoch). `warmup_epochs` ramps linearly from 0 first."""

    kind: Literal["constant", "cosine", "step", "exponential"] = "cosine"
    min_lr: float = Field(0.0, ge=0.0)
    milestones: list[Annotated[int, Field(ge=1)]] = []
    gamma: float = Field(0.1, gt=0.0)
    warmup_epochs: int = Field(0, ge=0)


class _Policy(_Strict):
    start: int = Field(0, ge=0)
    end: int | None = Field(None, ge=1)
    unit: Literal["epoch", "step"] = "epoch"

    @model_validator(mode="after")
    def _range(self):
        if self.end is not None and self.end <= self.start:
            raise ValueError(f"end ({self.end}) must be greater than start ({self.start})")
        return self


class _AtEpochStart(_Policy):
    """Policies that change the model's structure: they happen once, at the start of an epoch."""

    unit: Literal["epoch"] = "epoch"
    end: None = None


class LevelPolicy(_Policy):
    """One-shot level pruning at `start` (exact sparsity per layer, or global with scope: global)."""

    method: Literal["level"]
    sparsity: PerLayerSparsity
    scope: Literal["layer", "global"] = "layer"
    layers: list[str] | None = None
    end: None = None


class AGPPolicy(_Policy):
    """Automated gradual pruning (Zhu & Gupta 2017): prune at start, start+frequency, … up to end−1."""

    method: Literal["agp"]
    final_sparsity: PerLayerSparsity
    initial_sparsity: Fraction = 0.0
    frequency: int = Field(1, ge=1)
    scope: Literal["layer", "global"] = "layer"
    layers: list[str] | None = None
    end: int = Field(ge=1)

    @model_validator(mode="after")
    def _span(self):
        if self.end - self.start <= self.frequency:
            raise ValueError(f"agp needs end - start > frequency to prune more than once "
                             f"(got start {self.start}, end {self.end}, frequency {self.frequency})")
        return self


class RegularizerPolicy(_Policy):
    """λ·Σ|w|^p added to the loss while active: l1 (p = 1) or l2 (p = 2) (Han et al. 2015)."""

    method: Literal["regularizer"]
    kind: Literal["l1", "l2"] = "l1"
    strength: float = Field(gt=0.0)
    layers: list[str] | None = None


class QATPolicy(_AtEpochStart):
    """Quantization-aware training from `start` to the end (STE or LSQ fake quantizers)."""

    method: Literal["qat"]
    weight_bits: int = Field(8, ge=2, le=8)
    act_bits: int = Field(8, ge=2, le=8)
    quantizer: Literal["ste", "lsq"] = "ste"
    granularity: Literal["channel", "tensor"] = "channel"


class DistillPolicy(_Policy):
    """Hinton KD from a frozen teacher while active: `pretrained` (the model as it was before the policies)
    or a .safetensors file of `teacher_model`."""

    method: Literal["distill"]
    teacher: str = "pretrained"
    teacher_model: str | None = None
    temperature: float = Field(4.0, gt=0.0)
    alpha: float = Field(0.9, ge=0.0, le=1.0)


class SharePolicy(_AtEpochStart):
    """k-means weight sharing at `start` (Deep Compression); later epochs fine-tune the centroids."""

    method: Literal["share"]
    bits: int | dict[str, int] | None = None
    init: Literal["linear", "random", "density"] = "linear"

    @field_validator("bits")
    @classmethod
    def _bits(cls, v):
        for b in ([v] if isinstance(v, int) else (v or {}).values()):
            if not 1 <= b <= 16:
                raise ValueError(f"bits must be in 1..16, got {b}")
        return v


class ChannelsPolicy(_AtEpochStart):
    """Structured pruning at `start`: remove whole channels (a thinner dense model), then fine-tune."""

    method: Literal["channels"]
    criterion: str = "l1"
    ratio: float | None = Field(None, gt=0.0, lt=1.0)
    remove_macs: float | None = Field(None, gt=0.0, lt=1.0)

    @model_validator(mode="after")
    def _one(self):
        if (self.ratio is None) == (self.remove_macs is None):
            raise ValueError("give exactly one of ratio or remove_macs")
        return self


class PTQPolicy(_AtEpochStart):
    """The post-training quantization ladder (`ptq_ladder`) once training has ended: fold BN, cross-layer
    equalization (`cle`), calibration, AdaRound (`adaround`, `adaround_steps` per layer) and bias correction.
    It runs after the last epoch, so it takes no `start`: a schedule position would mean nothing."""

    method: Literal["ptq"]
    weight_bits: int = Field(8, ge=2, le=8)
    act_bits: int = Field(8, ge=2, le=8)
    granularity: Literal["channel", "tensor"] = "channel"
    calibration: Literal["minmax", "moving_average", "percentile", "mse", "entropy"] = "minmax"
    calib_batches: int = Field(8, ge=1, le=100_000)
    cle: bool = False
    bias_correction: Literal["none", "empirical", "analytic"] = "none"
    adaround: bool = False
    adaround_steps: int = Field(1000, ge=1, le=100_000)

    @field_validator("start")
    @classmethod
    def _no_start(cls, v):
        raise ValueError("ptq runs once after training ends: leave 'start' out")

    @model_validator(mode="after")
    def _steps_need_adaround(self):
        if "adaround_steps" in self.model_fields_set and not self.adaround:
            raise ValueError("adaround_steps is set but adaround is false: set adaround: true or drop adaround_steps")
        return self


Policy = Annotated[LevelPolicy | AGPPolicy | RegularizerPolicy | QATPolicy | DistillPolicy | SharePolicy | ChannelsPolicy | PTQPolicy,
                   Field(discriminator="method")]
METHODS = ("level", "agp", "regularizer", "qat", "distill", "share", "channels", "ptq")


class Export(_Strict):
    onnx: bool = False


class Recipe(_Strict):
    name: str = "recipe"
    model: str | None = None  # a zoo name; None when the Python API is given the model object
    data: Data = Data()
    weights: str | None = None
    seed: int = 0
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$",
                        description="where training runs: auto (this rank's GPU when CUDA is present, else cpu), cpu, cuda, cuda:N")
    pretrain: Pretrain = Pretrain()
    training: Training
    lr_schedule: LRSchedule = LRSchedule()
    policies: list[Policy] = []
    export: Export = Export()

    @field_validator("data", mode="before")
    @classmethod
    def _data_name(cls, v):
        return {"name": v} if isinstance(v, str) else v


# -------------------------------------------------------------------------------- schedule checks
_PRUNERS = ("level", "agp")


def _steps(p: _Policy, steps_per_epoch: int | None, total_epochs: int) -> tuple[int, int] | None:
    """The policy's active range [start, end) in steps (in epochs when steps_per_epoch is None and it is epoch-based)."""
    end = p.end if p.end is not None else (p.start + 1 if p.method == "level" else None)
    if steps_per_epoch is None:
        if p.unit == "step":
            return None
        return p.start, total_epochs if end is None else end
    scale = steps_per_epoch if p.unit == "epoch" else 1
    return p.start * scale, (total_epochs * steps_per_epoch if end is None else end * scale)


def check_schedule(recipe: Recipe, steps_per_epoch: int | None = None) -> list[tuple[tuple, str]]:
    """Conflicts pydantic cannot see, as [(location, message)]: ranges past the run, overlapping pruners,
    two quantizers, methods that change the model after ones that depend on it. Step ranges are
    compared with epoch ranges only once steps_per_epoch is known (the runner checks again)."""
    errors: list[tuple[tuple, str]] = []
    total = recipe.training.epochs
    ranges = {i: _steps(p, steps_per_epoch, total) for i, p in enumerate(recipe.policies)}
    limit = total * steps_per_epoch if steps_per_epoch else total
    for i, p in enumerate(recipe.policies):
        r = ranges[i]
        if r is not None and (r[0] >= limit or r[1] > limit):
            unit = "steps" if steps_per_epoch and p.unit == "step" else p.unit + "s"
            errors.append((("policies", i, "end" if p.end is not None and r[0] < limit else "start"),
                           f"{p.method} runs past the end of training ({total} epochs{f' = {limit} steps' if steps_per_epoch else ''}, in {unit})"))
    if errors:
        return errors
    by = lambda m: [i for i, p in enumerate(recipe.policies) if p.method == m]
    for m in ("qat", "share", "channels", "ptq"):
        if len(by(m)) > 1:
            errors.append((("policies", by(m)[1], "method"), f"only one '{m}' policy per recipe"))
    if by("qat") and by("share"):
        errors.append((("policies", by("share")[0], "method"), "'share' and 'qat' both quantize the weights: use one of them"))
    for m in ("qat", "share"):  # ptq quantizes the trained float model: weights already quantized leave it nothing to do
        if by("ptq") and by(m):
            errors.append((("policies", by("ptq")[0], "method"), f"'ptq' and '{m}' both quantize the weights: use one of them"))

    def overlap(i: int, j: int) -> bool:
        a, b = ranges[i], ranges[j]
        return a is not None and b is not None and a[0] < b[1] and b[0] < a[1]

    def layers_disjoint(i: int, j: int) -> bool:
        li, lj = getattr(recipe.policies[i], "layers", None), getattr(recipe.policies[j], "layers", None)
        return li is not None and lj is not None and not set(li) & set(lj)

    pruners = [i for i, p in enumerate(recipe.policies) if p.method in _PRUNERS]
    for k, i in enumerate(pruners):
        for j in pruners[k + 1:]:
            if overlap(i, j) and not layers_disjoint(i, j):
                errors.append((("policies", j, "start"), f"pruning schedules overlap: policies[{i}] ({recipe.policies[i].method}) and "
                               f"policies[{j}] ({recipe.policies[j].method}) act on the same layers at the same time"))
    distills = by("distill")
    for k, i in enumerate(distills):
        for j in distills[k + 1:]:
            if overlap(i, j):
                errors.append((("policies", j, "start"), f"distillation schedules overlap: policies[{i}] and policies[{j}]"))
    for m, what in (("qat", "pruning must finish before QAT starts"), ("share", "pruning must finish before weights are shared")):
        for s in by(m):
            for i in pruners:
                r = ranges[i]
                if r is not None and ranges[s] is not None and r[1] > ranges[s][0]:
                    errors.append((("policies", i, "end" if recipe.policies[i].end is not None else "start"),
                                   f"{what} (policies[{s}] starts at epoch {recipe.policies[s].start})"))
    for c in by("channels"):
        for m in ("qat", "share"):
            for s in by(m):
                if recipe.policies[s].start <= recipe.policies[c].start:
                    errors.append((("policies", c, "start"), f"channel removal must come before '{m}' (policies[{s}])"))
        for i in pruners:
            r = ranges[i]
            if r is not None and ranges[c] is not None and r[0] < ranges[c][0]:
                errors.append((("policies", i, "start"), f"unstructured pruning before channel removal is not supported: "
                               f"start it at or after epoch {recipe.policies[c].start}"))
    return errors


# -------------------------------------------------------------------------------- loading with line numbers
def _line(node: yaml.Node | None, loc: tuple) -> int | None:
    """1-based YAML line of the value at `loc` (the deepest part of it that exists)."""
    if node is None:
        return None
    for part in loc:
        nxt = None
        if isinstance(node, yaml.MappingNode):
            nxt = next((v for k, v in node.value if getattr(k, "value", None) == str(part)), None)
            if nxt is None and isinstance(part, str) and part in METHODS:  # discriminated-union tag: stay here
                continue
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            nxt = node.value[part]
        if nxt is None:
            break
        node = nxt
    return node.start_mark.line + 1


def _where(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part not in METHODS:
            out += ("." if out else "") + str(part)
    return out or "recipe"


_TYPE_TAGS = {"int", "float", "str", "bool", "none"}


def _clean(loc: tuple) -> tuple:
    """A location without pydantic's union-member tags ('constrained-float', 'dict[str,...]', 'int')."""
    return tuple(p for p in loc if not (isinstance(p, str) and (p in _TYPE_TAGS or "[" in p or "-" in p)))


def _problems(e: ValidationError) -> list[tuple[tuple, str]]:
    """One problem per field: a value that fits no member of a union is reported once."""
    seen: dict[tuple, str] = {}
    for err in e.errors():
        seen.setdefault(_clean(tuple(err["loc"])), _message(err))
    return list(seen.items())


def _message(err: dict) -> str:
    if err["type"] == "missing":
        return "required field is missing"
    if err["type"] == "union_tag_invalid":
        return f"unknown method {err['input'].get('method')!r}; choose from {', '.join(METHODS)}"
    if err["type"] == "union_tag_not_found":
        return f"missing 'method'; choose from {', '.join(METHODS)}"
    if err["type"] == "extra_forbidden":
        return "unknown field (check the spelling)"
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] not in ("missing",) and not isinstance(err.get("input"), (dict, list)):
        msg += f" (got {err['input']!r})"
    return msg


def _fail(source: str, node: yaml.Node | None, problems: list[tuple[tuple, str]]) -> UserError:
    loc, msg = problems[0]
    line = _line(node, loc)
    more = f" (and {len(problems) - 1} more problem{'s' if len(problems) > 2 else ''})" if len(problems) > 1 else ""
    return UserError(f"{source}{f':{line}' if line else ''}: {_where(loc)}: {msg}{more}")


MAX_RECIPE_BYTES = 1 << 20
MAX_YAML_DEPTH = 32
MAX_YAML_VALUES = 100_000
"""Values a recipe may hold with every alias expanded: a few hundred is typical; an alias bomb ("billion laughs") has billions."""
MAX_INT = 2**63 - 1


def _read_text(path: Path) -> str:
    try:
        size = path.stat().st_size
        if size > MAX_RECIPE_BYTES:
            raise UserError(f"{path}: {size} bytes is too large for a recipe (max {MAX_RECIPE_BYTES}); is it the right file?")
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not a UTF-8 text file (byte {e.start}); a recipe is YAML text") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read the recipe ({e.strerror or e})") from None


def _check_structure(text: str, source: str) -> None:
    """Depth and size limits on the YAML event stream, before anything recursive (compose) or expanding runs."""
    depth, anchors = 0, {}
    expanded: list[int] = [0]  # per open collection: values read in it so far, each alias counted by its expansion
    stack: list[str | None] = []
    for ev in yaml.parse(text):
        line = ev.start_mark.line + 1
        if isinstance(ev, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            depth += 1
            if depth > MAX_YAML_DEPTH:
                raise UserError(f"{source}:{line}: nested deeper than {MAX_YAML_DEPTH} levels; a recipe is a few levels deep")
            stack.append(ev.anchor)
            expanded.append(1)
        elif isinstance(ev, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            depth -= 1
            anchor = stack.pop()
            size = expanded.pop()
            if anchor is not None:
                anchors[anchor] = size
            expanded[-1] += size
        elif isinstance(ev, yaml.ScalarEvent):
            expanded[-1] += 1
            if ev.anchor is not None:
                anchors[ev.anchor] = 1
        elif isinstance(ev, yaml.AliasEvent):
            expanded[-1] += anchors.get(ev.anchor, 1)
        if sum(expanded) > MAX_YAML_VALUES:  # everything read so far, aliases expanded
            raise UserError(f"{source}:{line}: the recipe expands to more than {MAX_YAML_VALUES} values "
                            "(aliases of aliases, a 'billion laughs'?); write the values out")


def _check_numbers(raw: Any, loc: tuple = ()) -> list[tuple[tuple, str]]:
    """The first non-finite float or out-of-range integer, as a (location, message) problem."""
    if isinstance(raw, dict):
        for k, v in raw.items():
            found = _check_numbers(v, loc + (k,))
            if found:
                return found
    elif isinstance(raw, list):
        for i, v in enumerate(raw):
            found = _check_numbers(v, loc + (i,))
            if found:
                return found
    elif isinstance(raw, float) and not math.isfinite(raw):
        return [(loc, f"must be a finite number (got {raw!r})")]
    elif isinstance(raw, int) and not isinstance(raw, bool) and abs(raw) > MAX_INT:
        return [(loc, f"number out of range (|value| must be at most {MAX_INT})")]
    elif isinstance(raw, str) and len(raw) < 40:
        try:
            value = float(raw)
        except ValueError:
            return []
        if not math.isfinite(value):
            return [(loc, f"must be a finite number (got {raw!r})")]
    return []


def load_recipe(path_or_dict: str | Path | dict[str, Any], steps_per_epoch: int | None = None) -> Recipe:
    """Parse and validate a recipe (a YAML file, YAML text or a dict); raise one UserError naming field and line.

    Hostile YAML is refused before it can hurt: files over 1 MiB, nesting deeper than 32, more than
    100,000 values once aliases are expanded, non-finite numbers (`.inf`, `.nan`) and integers beyond 64 bits.
    """
    node, source = None, "recipe"
    if isinstance(path_or_dict, dict):
        raw = path_or_dict
    else:
        text = str(path_or_dict)
        if "\n" not in text and len(text) < 4096 and Path(text).suffix in (".yaml", ".yml", ".json"):
            if not Path(text).is_file():
                raise UserError(f"recipe file not found: {text}")
            source, text = text, _read_text(Path(text))
        elif len(text.encode("utf-8", "surrogatepass")) > MAX_RECIPE_BYTES:
            raise UserError(f"recipe text of {len(text)} characters is too large (max {MAX_RECIPE_BYTES} bytes)")
        try:
            _check_structure(text, source)
            node, raw = yaml.compose(text), yaml.safe_load(text)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            problem = " ".join(str(getattr(e, "problem", None) or e).split())[:200]  # one line, whatever the YAML error says
            raise UserError(f"{source}{f':{mark.line + 1}' if mark else ''}: not valid YAML: {problem}") from None
        except RecursionError:
            raise UserError(f"{source}: nested too deeply to be a recipe") from None
    if not isinstance(raw, dict):
        raise UserError(f"{source}: a recipe is a YAML mapping with at least 'model' and 'training'")
    problems = _check_numbers(raw)
    if problems:
        raise _fail(source, node, problems)
    try:
        recipe = Recipe.model_validate(raw)
    except ValidationError as e:
        raise _fail(source, node, _problems(e)) from None
    problems = check_schedule(recipe, steps_per_epoch)
    if problems:
        raise _fail(source, node, problems)
    return recipe
