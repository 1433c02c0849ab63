"""Chip peaks, slice names and the roofline arithmetic behind `python -m flan_jax.compile`.

Everything here is an *estimate*: published per-chip peaks (Cloud TPU documentation) and a
roofline that assumes compute, HBM traffic and interconnect traffic overlap perfectly, so the
step time is the slowest of the three. Real steps are slower; the estimate says whether a
configuration is compute-, memory- or communication-bound and whether it fits in HBM.

Slice names follow Cloud TPU accelerator types. v4 and v5p names count TensorCores and run
two cores per chip as one "megacore" device (v4-64 = 32 chips = 32 JAX devices, 32 GiB each);
v5e and v6e names count chips (one TensorCore each).
"""
from __future__ import annotations

import dataclasses
import math
import os
import re

GIB = 1024 ** 3


@dataclasses.dataclass(frozen=True)
class ChipSpec:
  """Published peaks of one chip (one JAX device)."""
  name: str
  peak_flops: float          # dense bf16 FLOP/s
  hbm_bytes: int             # memory per device
  hbm_bandwidth: float       # bytes/s
  ici_bandwidth: float       # bytes/s per chip, all links together
  cores_per_chip: int        # TensorCores behind one accelerator-type count unit
  mesh_dims: int             # 3 (torus/mesh in 3-D) or 2


CHIPS: dict[str, ChipSpec] = {
    # cloud.google.com/tpu/docs/v4: 275 TFLOP/s bf16, 32 GiB HBM2 at 1,200 GB/s; ICI 6 × 50 GB/s.
    "v4": ChipSpec("TPU v4", 275e12, 32 * GIB, 1200e9, 300e9, 2, 3),
    # cloud.google.com/tpu/docs/v5p: 459 TFLOP/s, 95 GB at 2,765 GB/s, ICI 4,800 Gbps.
    "v5p": ChipSpec("TPU v5p", 459e12, 95 * 10 ** 9, 2765e9, 600e9, 2, 3),
    # cloud.google.com/tpu/docs/v5e: 197 TFLOP/s, 16 GB at 819 GB/s, ICI 1,600 Gbps.
    "v5e": ChipSpec("TPU v5e", 197e12, 16 * 10 ** 9, 819e9, 200e9, 1, 2),
    # cloud.google.com/tpu/docs/v6e: 918 TFLOP/s, 32 GB at 1,640 GB/s, ICI 3,200 Gbps.
    "v6e": ChipSpec("TPU v6e", 918e12, 32 * 10 ** 9, 1640e9, 400e9, 1, 2),
}
_ALIASES = {"v5litepod": "v5e", "v5lite": "v5e", "v6lite": "v6e"}


@dataclasses.dataclass(frozen=True)
class Topology:
  """A named slice: the libtpu topology name and the chip it is made of."""
  accelerator_type: str      # as written by the user, e.g. 'v4-64'
  libtpu_name: str           # e.g. 'v4:2x4x4'
  chip: ChipSpec
  num_chips: int

  @property
  def megacore(self) -> bool:
    return self.chip.cores_per_chip == 2


def _grid(num_chips: int, dims: int) -> tuple[int, ...]:
  """The most cubic power-of-two grid of `num_chips` chips, e.g. 32 → 2x4x4, 4 → 2x2x1.

  3-D slices grow from one host's 2x2x1 block (libtpu rejects grids that hosts do not tile).
  """
  shape = [2, 2, 1] if dims == 3 and num_chips >= 4 else [1] * dims
  remaining = num_chips // math.prod(shape)
  while remaining > 1:
    shape[shape.index(min(shape))] *= 2
    remaining //= 2
  return tuple(shape) if 1 in shape and dims == 3 else tuple(sorted(shape))


def parse_topology(name: str) -> Topology:
  """'v4-64', 'v5p-128', 'v5e-16' / 'v5litepod-16', 'v6e-8', or a libtpu name 'v4:4x4x2'."""
  raw = name.strip().lower()
  match = re.fullmatch(r"(v\d+[a-z]*)(?:-(\d+)|:(\d+(?:x\d+)+))", raw)
  if not match:
    raise ValueError(f"topology '{name}' is not understood; write a Cloud TPU accelerator type "
                     f"such as v4-64, v5p-128, v5e-16 or v6e-8, or a libtpu name such as v4:2x4x4")
  family = _ALIASES.get(match.group(1), match.group(1))
  if family not in CHIPS:
    raise ValueError(f"topology '{name}': unknown TPU generation '{match.group(1)}'; "
                     f"known: {', '.join(sorted(CHIPS))}")
  chip = CHIPS[family]
  if match.group(3):
    shape = tuple(int(s) for s in match.group(3).split("x"))
    num_chips = math.prod(shape)
  else:
    cores = int(match.group(2))
    num_chips = cores // chip.cores_per_chip
    if num_chips < 1 or num_chips & (num_chips - 1) or cores % chip.cores_per_chip:
      unit = "TensorCores (2 per chip)" if chip.cores_per_chip == 2 else "chips"
      raise ValueError(f"topology '{name}': {family} slice sizes count {unit} and must give a "
                       f"power-of-two number of chips, e.g. {family}-{8 * chip.cores_per_chip}")
    shape = _grid(num_chips, chip.mesh_dims)
  return Topology(name, f"{family}:{'x'.join(map(str, shape))}", chip, num_chips)


def tpu_devices(topology: Topology) -> list:
  """Compile-only TPU devices of the slice (needs libtpu: `pip install -e .[tpu]`)."""
  os.environ.setdefault("TPU_ACCELERATOR_TYPE", topology.accelerator_type)
  os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")  # keeps libtpu from probing GCE
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")  # compile-only: no chip to lock
  try:
    import libtpu  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
  except ImportError as e:
    raise RuntimeError(f"compiling for {topology.accelerator_type} needs libtpu, which is not "
                       f"installed; run `pip install -e .[tpu]`, or `make libtpu` and set "
                       f"PYTHONPATH=.venv/libtpu (or use --topology=cpu)") from e
  from jax.experimental import topologies  # pylint: disable=import-outside-toplevel
  options = {"chip_config_name": "megacore"} if topology.megacore else {}
  desc = topologies.get_topology_desc(platform="tpu", topology_name=topology.libtpu_name, **options)
  return list(desc.devices)


def cpu_spec(num_devices: int, peak_flops: float, memory_bytes: int) -> ChipSpec:
  """This host as a 'chip' per device: a share of the measured matmul peak and of the RAM."""
  return ChipSpec(f"CPU (1/{num_devices} of this host)", peak_flops / num_devices,
                  memory_bytes // num_devices, 20e9 / num_devices, 20e9 / num_devices, 1, 1)


@dataclasses.dataclass(frozen=True)
class Roofline:
  """Per-chip step-time estimate: max of compute, HBM and interconnect time (perfect overlap)."""
  compute_s: float
  memory_s: float
  comm_s: float

  @property
  def step_s(self) -> float:
    return max(self.compute_s, self.memory_s, self.comm_s)

  @property
  def serial_s(self) -> float:
    """No overlap at all: the pessimistic bound."""
    return self.compute_s + self.memory_s + self.comm_s

  @property
  def bound(self) -> str:
    return max((self.compute_s, "compute"), (self.memory_s, "HBM bandwidth"),
               (self.comm_s, "interconnect"))[1]


def roofline(chip: ChipSpec, flops: float, hbm_bytes_moved: float, comm_bytes: float) -> Roofline:
  """`flops`, `hbm_bytes_moved` and `comm_bytes` are per chip per step."""
  return Roofline(flops / chip.peak_flops, hbm_bytes_moved / chip.hbm_bandwidth,
                  comm_bytes / chip.ici_bandwidth)


_COMPUTATION = re.compile(r"^(?:ENTRY )?%([\w.\-]+) .*\{$")
# `%name = SHAPE opcode(operands), attributes`; tuple shapes hold parentheses (`T(8,128)`), so the
# shape ends at the first `) opcode(`.
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = (\(.*?\)|\S+) ([a-z][\w\-]*)\(([^)]*)\)(.*)$")
_SHAPE = re.compile(r"\b(pred|s8|u8|s16|u16|f16|bf16|s32|u32|f32|s64|u64|f64)\[([\d,]*)\](\{[^}]*\})?")
# A layout's memory space: `S(0)` (or none) is HBM; XLA's memory-space assignment puts buffers it
# prefetches or keeps close in others (on v4, `S(3)` buffers of up to 128 MiB: on-chip CMEM;
# `S(1)` VMEM; `S(2)`/`S(6)` scalars). Reading or writing those is not HBM traffic.
_MEMORY_SPACE = re.compile(r"S\((\d+)\)")
_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4, "u32": 4,
          "f32": 4, "s64": 8, "u64": 8, "f64": 8}
_COLLECTIVES = ("all-gather", "all-reduce", "reduce-scatter", "all-to-all", "collective-permute")
# Ops that move no data through HBM by themselves (their callees are counted instead).
_NO_TRAFFIC = {"parameter", "get-tuple-element", "tuple", "bitcast", "constant", "while", "call",
               "conditional", "after-all", "partition-id", "replica-id", "opt-barrier",
               "all-gather-done", "all-reduce-done", "collective-permute-done", "copy-done",
               "slice-done", "async-done", "async-update"}
# Asynchronous moves between memory spaces: `(source, destination, context)` tuples.
_MEMORY_MOVES = ("copy-start", "slice-start")


def _arrays(shape: str) -> list[tuple[int, bool]]:
  """(bytes, lives in HBM) of every array in an HLO shape, tuple elements in order."""
  arrays = []
  for dtype, dims, layout in _SHAPE.findall(shape):
    space = _MEMORY_SPACE.search(layout or "")
    arrays.append((_BYTES[dtype] * math.prod(int(d) for d in dims.split(",") if d),
                   space is None or space.group(1) == "0"))
  return arrays


def _shape_sizes(shape: str) -> list[int]:
  return [size for size, _ in _arrays(shape)]


def _hbm_bytes(shape: str) -> int:
  return sum(size for size, in_hbm in _arrays(shape) if in_hbm)


def _memory_move_bytes(ins: "_Instruction") -> int:
  """HBM bytes of a copy/slice between memory spaces: the destination's size, once for reading
  it from HBM and once for writing it there (a prefetch reads HBM, an eviction writes it)."""
  source, destination = _arrays(ins.shape)[:2]
  return destination[0] * (int(source[1]) + int(destination[1]))


@dataclasses.dataclass(frozen=True)
class HloTraffic:
  """Per-device bytes of one execution of a compiled HLO module, loops unrolled by trip count."""
  collective_bytes: float    # interconnect: all-gather result, reduce-scatter input, 2× all-reduce, ...
  hbm_bytes: float           # operands + results of every top-level instruction (fusions as XLA counts them)
  unknown_trip_counts: int   # while loops whose trip count could not be read (counted once)


@dataclasses.dataclass
class _Instruction:
  name: str
  shape: str
  opcode: str
  operands: list[str]
  attributes: str
  callees: list[str]


def _parse(hlo_text: str) -> tuple[str | None, dict[str, list[_Instruction]], dict[str, int], dict[str, list[int]]]:
  """(entry name, computation → instructions, instruction → result bytes in HBM, computation → int
  constants)."""
  bodies: dict[str, list[_Instruction]] = {}
  sizes: dict[str, int] = {}
  constants: dict[str, list[int]] = {}
  entry = current = None
  for line in hlo_text.splitlines():
    header = _COMPUTATION.match(line)
    if header and not line.startswith(" "):
      current = header.group(1)
      bodies[current], constants[current] = [], []
      entry = current if line.startswith("ENTRY") else entry
      continue
    match = _INSTRUCTION.match(line) if current else None
    if not match:
      continue
    name, shape, opcode, operands, attributes = match.groups()
    sizes[name] = _hbm_bytes(shape)
    if opcode == "parameter":
      attributes = operands.strip()  # the parameter's index
    if opcode == "constant" and re.fullmatch(r"[su]\d+\[\]", shape.split("{")[0]):
      constants[current].append(int(re.match(r"\s*(-?\d+)", operands).group(1)))
    callees = re.findall(r"(?:calls|to_apply|body|condition|branch_computations)=\{?%([\w.\-]+)", attributes)
    bodies[current].append(_Instruction(name, shape, opcode, re.findall(r"%([\w.\-]+)", operands),
                                        attributes, callees))
  return entry, bodies, sizes, constants


def _loop_invariants(body: list[_Instruction]) -> set[str]:
  """Names of the body's get-tuple-elements that the loop passes on unchanged (weights, inputs)."""
  param = next((i.name for i in body if i.opcode == "parameter"), None)
  root = body[-1] if body else None
  if param is None or root is None or root.opcode != "tuple":
    return set()
  invariant = set()
  for ins in body:
    index = re.search(r"index=(\d+)", ins.attributes) if ins.opcode == "get-tuple-element" else None
    if index and ins.operands == [param]:
      i = int(index.group(1))
      if i < len(root.operands) and root.operands[i] == ins.name:
        invariant.add(ins.name)
  return invariant


def _fusion_bytes(fusion: _Instruction, bodies: dict[str, list[_Instruction]],
                  sizes: dict[str, int]) -> tuple[int, list[int]]:
  """(result bytes written, bytes read per operand) of one fusion, as XLA's cost analysis counts
  them: an operand read only through slices counts the slices; a buffer updated in place by a
  dynamic-update-slice is neither read nor written whole, only the update is written."""
  fused = bodies.get(fusion.callees[0], []) if fusion.callees else []
  result = sizes[fusion.name]
  reads = [sizes.get(o, 0) for o in fusion.operands]
  index_of = {ins.name: int(ins.attributes) for ins in fused if ins.opcode == "parameter"}
  for ins in fused:
    if ins.opcode == "dynamic-update-slice" and ins.operands and ins.operands[0] in index_of:
      reads[index_of[ins.operands[0]]] = 0
      result += sizes.get(ins.operands[1], 0) - sizes[ins.name]
  for name, index in index_of.items():
    users = [u for u in fused if name in u.operands]
    if users and reads[index] and all(u.opcode in ("dynamic-slice", "slice") for u in users):
      reads[index] = sum(sizes[u.name] for u in users)
  return max(result, 0), reads


@dataclasses.dataclass(frozen=True)
class TrafficItem:
  """One instruction's share of a step: bytes summed over every execution (loop trips included)."""
  name: str
  op_name: str               # the jax operation it came from (HLO metadata), '' if none
  shape: str
  hbm_bytes: float
  collective_bytes: float


def traffic_items(hlo_text: str) -> tuple[list[TrafficItem], int]:
  """Every top-level instruction's HBM and interconnect bytes per step, and the number of while
  loops whose trip count could not be read (counted once). See `hlo_traffic` for the model."""
  entry, bodies, sizes, constants = _parse(hlo_text)
  shapes = {ins.name: ins.shape for body in bodies.values() for ins in body}
  operand_bytes = lambda name: sum(_shape_sizes(shapes.get(name, "")))
  items: list[TrafficItem] = []
  unknown = [0]

  def trip_count(condition: str) -> int:
    found = constants.get(condition, []) + [c for ins in bodies.get(condition, []) for callee in ins.callees
                                            for c in constants.get(callee, [])]
    if not found:
      unknown[0] += 1
      return 1
    return max(found)

  def record(ins: _Instruction, hbm: float = 0.0, comm: float = 0.0) -> None:
    op_name = re.search(r'op_name="([^"]*)"', ins.attributes)
    items.append(TrafficItem(ins.name, op_name.group(1) if op_name else "", ins.shape, hbm, comm))

  def walk(computation: str, runs: int, loop_runs: int) -> None:
    """`runs`: executions of `computation`; `loop_runs`: of the loop around it, which is how
    often a buffer the loop passes on unchanged is read whole."""
    body = bodies.get(computation, [])
    invariant = _loop_invariants(body)
    for ins in body:
      base = ins.opcode.removesuffix("-start")
      if base in _COLLECTIVES:
        arrays = [s for s in _shape_sizes(ins.shape) if s > 4 or not ins.opcode.endswith("-start")]
        if ins.opcode.endswith("-start") and base != "all-reduce" and len(arrays) > 1:
          arrays = arrays[len(arrays) // 2:]  # (operands, results, context): keep the results
        moved = sum(arrays)
        if base == "reduce-scatter":
          moved = sum(operand_bytes(o) for o in ins.operands)  # each device sends ~ its input
        record(ins, comm=runs * moved * (2 if base == "all-reduce" else 1))
      if ins.opcode == "while":
        n = trip_count(re.search(r"condition=%([\w.\-]+)", ins.attributes).group(1))
        walk(re.search(r"body=%([\w.\-]+)", ins.attributes).group(1), runs * n, runs)
      elif ins.opcode in ("call", "conditional", "async-start"):
        for callee in ins.callees:
          walk(callee, runs, runs)
      elif ins.opcode in _MEMORY_MOVES:
        record(ins, hbm=runs * _memory_move_bytes(ins))
      elif ins.opcode not in _NO_TRAFFIC:
        result, reads = _fusion_bytes(ins, bodies, sizes) if ins.opcode == "fusion" else (
            sizes[ins.name], [sizes.get(o, 0) for o in ins.operands])
        record(ins, hbm=runs * result + sum(read * (loop_runs if operand in invariant else runs)
                                            for operand, read in zip(ins.operands, reads)))

  if entry:
    walk(entry, 1, 1)
  return items, unknown[0]


def hlo_traffic(hlo_text: str) -> HloTraffic:
  """Walks a compiled (per-device) HLO module from ENTRY, multiplying loop bodies by their trip count.

  XLA's own cost analysis counts a while body once, which undercounts scanned layers, the
  microbatch loop and the windowed (collective-matmul) loops the TPU compiler emits. Trip counts
  are read from the loop condition (`counter < constant`). Fusion bodies are not entered: a
  fusion's HBM traffic is its operands and result, except that a buffer the loop passes on
  unchanged (stacked layer weights, the activations a windowed matmul slices) counts once per
  loop, not once per iteration, since each iteration reads only its slice of it. Buffers that
  memory-space assignment placed outside HBM (on-chip CMEM/VMEM) cost only the copy that moves
  them in or out. An estimate: tiling, VMEM use inside a fusion and on-chip bandwidth are not
  modelled.
  """
  items, unknown = traffic_items(hlo_text)
  return HloTraffic(sum(i.collective_bytes for i in items), sum(i.hbm_bytes for i in items), unknown)


def top_traffic(hlo_text: str, count: int) -> list[TrafficItem]:
  """The `count` instructions that move the most HBM bytes per step, largest first."""
  items, _ = traffic_items(hlo_text)
  return sorted(items, key=lambda i: -i.hbm_bytes)[:count]


def collective_bytes(hlo_text: str) -> float:
  """Per-device interconnect bytes of one execution of a compiled HLO module (see `hlo_traffic`)."""
  return hlo_traffic(hlo_text).collective_bytes
