"""Fails the install when a package that breaks this stack slipped in (run by `make`).

`t5` declares `seqio-nightly` and `tfds-nightly`, which install into the same folders as the
stable `seqio` / `tensorflow-datasets` and silently replace them.
"""
import importlib.metadata
import sys

FORBIDDEN = ("seqio-nightly", "tfds-nightly", "tensorflow", "tf-nightly", "mesh-tensorflow")


def main() -> int:
  installed = {d.metadata["Name"].lower() for d in importlib.metadata.distributions()}
  bad = sorted(n for n in FORBIDDEN if n in installed)
  if bad:
    print(f"error: {', '.join(bad)} installed; they overwrite the pinned stack. "
          f"Remove them (pip uninstall) and rerun `make`.", file=sys.stderr)
    return 1
  print("environment ok: no nightly packages, tensorflow-cpu only")
  return 0


if __name__ == "__main__":
  sys.exit(main())
