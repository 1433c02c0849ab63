"""The Flan 2022 mixtures: per-collection submixtures and `flan2022_submix` on top.

Leaf rates are examples-proportional with per-task caps (`mixing.CAPS`): a task contributes
`min(cap, num_examples)` inside its variant mixture. Then:

* `flan2021_submix`, `t0_submix`: the four variants `<c>_{zs_opt,zs_noopt,fs_opt,fs_noopt}` at 25% each;
* `niv2_submix`: `niv2_zs_noopt` : `niv2_fs_noopt` = 1 : 1;
* `cot_submix`: (`cot_zs_cot` : `cot_fs_cot` = 1 : 1) : input inversion (`cot_inversion`) = 1 : 0.3;
* `dialog_submix`: (`dialog_zs_noopt` : `dialog_fs_noopt` = 1 : 1) : `dialog_inversion` = 1 : 0.3;
* `flan2022_submix`: Flan 2021 0.40, T0 0.32, NIv2 0.20, CoT 0.05, Dialog 0.03.

A collection with no registered tasks (e.g. NIv2 without its split lists) is left out, and the top
level is renormalized over the rest. Where the example counts come from is recorded per task in
`user_tasks.CATALOG` (`count_source`).
"""
from typing import Optional

from flan_jax.data import mixing
from flan_jax.data import templates
from flan_jax.data import user_tasks
from flan_jax.tasks import cot  # pylint: disable=unused-import
from flan_jax.tasks import dialog  # pylint: disable=unused-import
from flan_jax.tasks import flan2021  # pylint: disable=unused-import
from flan_jax.tasks import niv2  # pylint: disable=unused-import
from flan_jax.tasks import t0  # pylint: disable=unused-import

FOUR_VARIANTS = (templates.ZS_OPT, templates.ZS_NOOPT, templates.FS_OPT, templates.FS_NOOPT)
TOP_LEVEL = {"flan2021_submix": 0.40, "t0_submix": 0.32, "niv2_submix": 0.20, "cot_submix": 0.05,
             "dialog_submix": 0.03}
INVERSION_RATE = 0.3


def variant_mixture(collection: str, template_type: str, cap: int) -> Optional[str]:
  """`<collection>_<type>`: every task of the collection in that variant at min(cap, count)."""
  entries = [(e.variants[template_type], mixing.capped_rate(e.num_examples, cap))
             for e in user_tasks.CATALOG.get(collection, {}).values()
             if template_type in e.variants]
  if not entries:
    return None
  return mixing.register_mixture(f"{collection}_{template_type}", entries)


def balanced_mixture(name: str, collection: str, template_types: tuple[str, ...],
                     cap: int) -> Optional[str]:
  """`name`: the collection's variant mixtures at equal rates."""
  parts = [variant_mixture(collection, t, cap) for t in template_types]
  parts = [p for p in parts if p]
  if not parts:
    return None
  return mixing.register_mixture(name, [(p, 1.0) for p in parts])


def _with_inversion(name: str, main: Optional[str], inversion: Optional[str]) -> Optional[str]:
  entries = [(m, r) for m, r in ((main, 1.0), (inversion, INVERSION_RATE)) if m]
  return mixing.register_mixture(name, entries) if entries else None


NOOPT = (templates.ZS_NOOPT, templates.FS_NOOPT)
SUBMIXTURES = {
    "flan2021_submix": balanced_mixture("flan2021_submix", "flan2021", FOUR_VARIANTS,
                                        mixing.CAPS["flan2021"]),
    "t0_submix": balanced_mixture("t0_submix", "t0", FOUR_VARIANTS, mixing.CAPS["t0"]),
    "niv2_submix": balanced_mixture("niv2_submix", "niv2", NOOPT, mixing.CAPS["niv2"]),
    "cot_submix": _with_inversion(
        "cot_submix",
        balanced_mixture("cot_main", "cot", (templates.ZS_COT, templates.FS_COT),
                         mixing.CAPS["cot"]),
        balanced_mixture("cot_inversion", "cot_inversion", NOOPT, mixing.CAPS["cot"])),
    "dialog_submix": _with_inversion(
        "dialog_submix",
        balanced_mixture("dialog_main", "dialog", NOOPT, mixing.CAPS["dialog"]),
        balanced_mixture("dialog_inversion", "dialog_inversion", NOOPT, mixing.CAPS["dialog"])),
}
FLAN2022 = mixing.register_mixture(
    "flan2022_submix", [(n, TOP_LEVEL[n]) for n, m in SUBMIXTURES.items() if m])
