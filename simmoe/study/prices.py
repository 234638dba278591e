"""The fabric price table: simmoe/data/prices.yaml, optionally overridden by a user's file.

A user's file has the same shape and is merged over the defaults key by key (a user may price
only ``switches.ib-ndr.usd``). Every entry is checked up front; errors name the file and the field.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import yaml

from simmoe.errors import InputError

DEFAULT_PRICES = Path(__file__).resolve().parent.parent / "data" / "prices.yaml"
SECTIONS = ("amortization", "switches", "nics", "links", "routers")


@dataclass(frozen=True)
class Price:
    usd: float
    basis: str
    radix: int | None = None  # switches only: the port count `usd` is for


@dataclass(frozen=True)
class PriceTable:
    life_years: float
    utilization: float
    switches: dict[str, Price]
    nics: dict[str, Price]
    links: dict[str, Price]
    router: Price
    files: tuple[str, ...]  # where the numbers came from, defaults first

    def lookup(self, section: str, link_class: str) -> Price:
        table = getattr(self, section)
        if link_class not in table:
            raise InputError(f"no price for {section} of link class {link_class!r}",
                             file=" + ".join(self.files), field=f"{section}.{link_class}", has_value=False,
                             allowed=f"add {section}.{link_class}: {{usd: N, basis: ...}} to your prices file "
                                     f"(priced now: {', '.join(sorted(table)) or 'none'})")
        return table[link_class]


def _read(path: Path, field: str) -> dict:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise InputError(f"cannot read the prices file ({err.strerror or err})", file=str(path), field=field,
                         has_value=False, allowed="a readable YAML file") from None
    except yaml.YAMLError as err:
        raise InputError(f"invalid YAML: {getattr(err, 'problem', None) or err}", file=str(path), field=field,
                         has_value=False, allowed="valid YAML") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InputError("a prices file is a mapping", file=str(path), field=field, value=type(data).__name__,
                         allowed=f"keys {', '.join(SECTIONS)}")
    for key in data:
        if key not in SECTIONS:
            raise InputError("unknown prices section", file=str(path), field=str(key), has_value=False,
                             allowed=", ".join(SECTIONS))
    return data


def _merge(base: dict, over: Mapping) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def _number(value: Any, files: str, field: str, *, positive: bool = False) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and (value > 0 if positive else value >= 0)
    if not ok:
        raise InputError("is not a valid number", file=files, field=field, value=value,
                         allowed="a number > 0" if positive else "a number >= 0 (US dollars)")
    return float(value)


def _price(entry: Any, files: str, field: str, *, switch: bool = False) -> Price:
    if not isinstance(entry, dict) or "usd" not in entry:
        raise InputError("a price is a mapping with usd and basis", file=files, field=field, value=entry,
                         allowed="{usd: N, basis: 'where the number comes from'}" + (", radix: P" if switch else ""))
    allowed_keys = {"usd", "basis", "radix"} if switch else {"usd", "basis"}
    for k in entry:
        if k not in allowed_keys:
            raise InputError("unknown key", file=files, field=f"{field}.{k}", has_value=False,
                             allowed=", ".join(sorted(allowed_keys)))
    basis = entry.get("basis")
    if not isinstance(basis, str) or not basis.strip():
        raise InputError("every price says where it comes from", file=files, field=f"{field}.basis",
                         value=basis, allowed="a non-empty string, e.g. 'assumption' or a quote reference")
    radix = None
    if switch:
        radix = entry.get("radix")
        if not isinstance(radix, int) or isinstance(radix, bool) or radix < 1:
            raise InputError("is the port count the switch price is for", file=files, field=f"{field}.radix",
                             value=radix, allowed="an integer >= 1")
    return Price(usd=_number(entry["usd"], files, f"{field}.usd"), basis=basis.strip(), radix=radix)


def load_prices(override: str | Path | None = None) -> PriceTable:
    """The default table, with ``override`` (a YAML file of the same shape) merged over it."""
    data = _read(DEFAULT_PRICES, "prices")
    files = [str(DEFAULT_PRICES)]
    if override is not None:
        data = _merge(data, _read(Path(override), "prices"))
        files.append(str(override))
    shown = " + ".join(files)
    am = data.get("amortization") or {}
    life = _number(am.get("life_years"), shown, "amortization.life_years", positive=True)
    util = _number(am.get("utilization"), shown, "amortization.utilization", positive=True)
    if util > 1:
        raise InputError("is a share of the fabric's life", file=shown, field="amortization.utilization",
                         value=util, allowed="a number in (0, 1]")
    tables = {}
    for section in ("switches", "nics", "links"):
        raw = data.get(section) or {}
        if not isinstance(raw, dict):
            raise InputError("is a mapping of link class -> price", file=shown, field=section, value=raw,
                             allowed="e.g. {ib-ndr: {usd: 36000, basis: ...}}")
        tables[section] = {str(k): _price(v, shown, f"{section}.{k}", switch=section == "switches")
                           for k, v in raw.items()}
    router = _price(data.get("routers"), shown, "routers")
    return PriceTable(life_years=life, utilization=util, router=router, files=tuple(files), **tables)
