"""Mutation score per module from mutmut's results in ``mutants/`` (run by ``make mutation``).

For every mutated file: mutants, killed (a test failed or timed out), survived, no tests, not checked, the
survivors listed as equivalent in ``tools/mutation_equivalent.toml`` (mutant name -> reason), and the score

    score = killed / (killed + survived + no tests - equivalent)

over the checked mutants. ``python tools/mutation_score.py [PATH_PREFIX] [--survivors]`` limits the table to
files under ``PATH_PREFIX`` and lists the surviving non-equivalent mutants (inspect one with ``mutmut show``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mutmut.stats import status_by_exit_code

if sys.version_info >= (3, 11):
    from tomllib import loads as toml_loads
else:  # mutmut depends on `toml` below 3.11
    from toml import loads as toml_loads

ROOT = Path(__file__).resolve().parent.parent
KILLED = {"killed", "timeout", "caught by type check", "segfault"}


def load_equivalent() -> dict[str, str]:
    path = ROOT / "tools" / "mutation_equivalent.toml"
    if not path.exists():
        return {}
    return toml_loads(path.read_text("utf-8")).get("equivalent", {})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("prefix", nargs="?", default="", help="only files whose path starts with this")
    parser.add_argument("--survivors", action="store_true", help="list surviving non-equivalent mutants")
    args = parser.parse_args(argv)
    metas = sorted((ROOT / "mutants").rglob("*.py.meta"))
    if not metas:
        print("no mutmut results under mutants/: run `make mutation` first", file=sys.stderr)
        return 1
    equivalent = load_equivalent()
    prefix = args.prefix.rstrip("/").removesuffix(".py")
    rows, survivors = [], []
    for meta in metas:
        source = str(meta.relative_to(ROOT / "mutants")).removesuffix(".meta")
        if not source.startswith(prefix):
            continue
        codes = json.loads(meta.read_text("utf-8"))["exit_code_by_key"]
        if not codes:
            continue
        counts = {"killed": 0, "survived": 0, "no tests": 0, "not checked": 0, "equivalent": 0}
        for name, code in codes.items():
            status = status_by_exit_code[code]
            if status in KILLED:
                counts["killed"] += 1
            elif status in ("survived", "no tests", "suspicious"):
                counts["survived" if status != "no tests" else "no tests"] += 1
                if name in equivalent:
                    counts["equivalent"] += 1
                else:
                    survivors.append(f"{name}  ({status})")
            else:
                counts["not checked"] += 1
        rows.append((source, len(codes), counts))
    print(f"{'module':48s} {'mutants':>7s} {'killed':>6s} {'surv.':>5s} {'no t.':>5s} {'unchk':>5s} "
          f"{'equiv':>5s} {'score':>7s}")
    for source, total, c in rows:
        tested = c["killed"] + c["survived"] + c["no tests"] - c["equivalent"]
        score = f"{100 * c['killed'] / tested:6.1f}%" if tested else "    n/a"
        print(f"{source:48s} {total:7d} {c['killed']:6d} {c['survived']:5d} {c['no tests']:5d} "
              f"{c['not checked']:5d} {c['equivalent']:5d} {score:>7s}")
    if args.survivors:
        print("\nsurviving non-equivalent mutants:")
        print("\n".join(survivors) if survivors else "(none)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
